import ClusterProtocol
import Foundation
import GGUF
import Wire

/// Serves our model file to workers that have none: the table of its pieces (what a shard-only fetch verifies
/// against), then the chunks they ask for, each hashed off the links' read loops, several at once, so that a
/// worker's pipelined requests are served while the next one is read.
final class ModelChunkServer: Sendable {
    let file: GGUFFile
    let digest: ModelDigest
    private let queue = DispatchQueue(label: "conclave.coordinator.fetch", attributes: .concurrent)

    init(file: GGUFFile, digest: ModelDigest) {
        self.file = file
        self.digest = digest
    }

    func serve(_ msg: WireMessage, to link: WorkerLink) {
        let (file, digest, id) = (self.file, self.digest, msg.envelope.requestID)
        switch msg.envelope.kind {
        case .fetchModel(let f): queue.async { link.send(ModelChunks.chunk(f, id: id, of: file)) }
        case .fetchPieces: queue.async { link.send(ModelChunks.pieceTable(digest, id: id)) }
        default: break
        }
    }
}
