import ClusterProtocol
import Foundation
import GGUF
import Wire

/// Serves our model file to workers that have none: each chunk is hashed off the links' read loops, several at
/// once, so that a worker's pipelined requests are served while the next one is read.
final class ModelChunkServer: Sendable {
    let file: GGUFFile
    private let queue = DispatchQueue(label: "conclave.coordinator.fetch", attributes: .concurrent)

    init(file: GGUFFile) { self.file = file }

    func serve(_ f: Conclave_V1_FetchModel, id: UInt64, to link: WorkerLink) {
        let file = self.file
        queue.async { link.send(ModelChunks.chunk(f, id: id, of: file)) }
    }
}
