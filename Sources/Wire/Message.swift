import Foundation
import SwiftProtobuf

public typealias Envelope = Conclave_V1_Envelope

/// One wire message: the protobuf envelope and the raw tensor frames it describes.
public struct WireMessage: Sendable {
    public var envelope: Envelope
    public var frames: [Data]

    public init(_ envelope: Envelope, frames: [Data] = []) {
        self.envelope = envelope
        self.frames = frames
    }

    public static let protocolVersion = UInt32(Conclave_V1_ProtocolVersion.current.rawValue)

    /// A dtype's block: values per block along the last dimension and its bytes (1 value per block for plain
    /// types).
    static func block(_ t: Conclave_V1_DType) -> (values: Int, bytes: Int)? {
        switch t {
        case .f32, .i32: return (1, 4)
        case .f16: return (1, 2)
        case .u8: return (1, 1)
        case .q80: return (32, 34)
        case .q8K: return (256, 292)
        default: return nil
        }
    }

    /// The bytes a frame of `dtype` and `shape` holds; nil when the shape overflows or its last dimension is
    /// not whole blocks.
    public static func frameBytes(_ dtype: Conclave_V1_DType, shape: [UInt64]) -> Int? {
        guard let (values, bytes) = block(dtype) else { return nil }
        guard values == 1 || (shape.last.map { $0 % UInt64(values) == 0 } ?? false) else { return nil }
        var elements: UInt64 = 1
        for d in shape {
            let (p, o) = elements.multipliedReportingOverflow(by: d)
            guard !o else { return nil }
            elements = p
        }
        let blocks = elements / UInt64(values)
        guard blocks <= UInt64(Int.max / bytes) else { return nil }
        return Int(blocks) * bytes
    }

    /// Frame 0 = serialized envelope, frames 1..n = tensors (their infos are set from `tensors`).
    public static func make(_ envelope: Envelope, tensors: [(Conclave_V1_DType, [Int], Data)] = []) -> WireMessage {
        var e = envelope
        e.protocolVersion = protocolVersion
        e.tensors = tensors.map { t in
            var info = Conclave_V1_TensorInfo()
            info.dtype = t.0
            info.shape = t.1.map { UInt64($0) }
            return info
        }
        return WireMessage(e, frames: tensors.map(\.2))
    }

    /// The multipart frames to send.
    public func encode() throws -> [Data] {
        [try envelope.serializedData()] + frames
    }

    /// Parses and validates a received multipart message: the envelope decodes, the protocol version matches,
    /// and every tensor frame has exactly the bytes its declared dtype and shape need.
    public static func decode(_ parts: [Data], maxBytes: Int = 1 << 30) throws(WireError) -> WireMessage {
        guard let head = parts.first else { throw WireError(.malformed, "empty message") }
        let total = parts.reduce(0) { $0 + $1.count }
        guard total <= maxBytes else { throw WireError(.tooLarge, "message of \(total) bytes exceeds the limit of \(maxBytes)") }
        let e: Envelope
        do {
            e = try Envelope(serializedBytes: head)
        } catch {
            throw WireError(.malformed, "frame 0 is not a protobuf Envelope (\(head.count) bytes): \(error)")
        }
        guard e.protocolVersion == protocolVersion else {
            throw WireError(.versionMismatch, "protocol version \(e.protocolVersion), this build speaks \(protocolVersion)")
        }
        guard e.kind != nil else { throw WireError(.malformed, "envelope has no message kind") }
        let frames = Array(parts.dropFirst())
        guard frames.count == e.tensors.count else {
            throw WireError(.malformed, "envelope describes \(e.tensors.count) tensors but \(frames.count) frames follow")
        }
        for (i, (info, frame)) in zip(e.tensors, frames).enumerated() {
            guard block(info.dtype) != nil else { throw WireError(.malformed, "tensor \(i) has no dtype") }
            guard let size = frameBytes(info.dtype, shape: info.shape), size == frame.count else {
                throw WireError(.malformed, "tensor \(i): shape \(info.shape) of \(info.dtype) needs "
                                + (frameBytes(info.dtype, shape: info.shape).map { "\($0) bytes" } ?? "whole blocks and no overflow")
                                + ", frame has \(frame.count)")
            }
        }
        return WireMessage(e, frames: frames)
    }

    /// The Error reply to send back for a message that could not be used.
    public static func errorReply(to requestID: UInt64, _ error: WireError) -> WireMessage {
        var e = Envelope()
        e.requestID = requestID
        var err = Conclave_V1_Error()
        err.code = error.code.protoCode
        err.message = error.message
        e.error = err
        return make(e)
    }
}

public struct WireError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Code: Sendable, Equatable {
        case malformed, versionMismatch, tooLarge, modelMismatch, unknownWorker, contextExceeded, internalError
        /// What was asked (an Assign, one more sequence) does not fit the worker's memory budget.
        case overBudget
        /// The cluster cannot serve now (still joining, a worker down); the same request may succeed later.
        case unavailable
        /// The worker is assigned by another coordinator that is still connected: a standby waits for it to go.
        case held

        var protoCode: Conclave_V1_Error.Code {
            switch self {
            case .malformed: return .malformed
            case .versionMismatch: return .versionMismatch
            case .tooLarge: return .tooLarge
            case .modelMismatch: return .modelMismatch
            case .unknownWorker: return .unknownWorker
            case .contextExceeded: return .contextExceeded
            case .internalError: return .internal
            case .overBudget: return .overBudget
            case .unavailable: return .unavailable
            case .held: return .held
            }
        }

        /// The code a peer's Error carries (an unknown one reads as internal).
        public init(proto: Conclave_V1_Error.Code) {
            switch proto {
            case .malformed: self = .malformed
            case .versionMismatch: self = .versionMismatch
            case .tooLarge: self = .tooLarge
            case .modelMismatch: self = .modelMismatch
            case .unknownWorker: self = .unknownWorker
            case .contextExceeded: self = .contextExceeded
            case .overBudget: self = .overBudget
            case .unavailable: self = .unavailable
            case .held: self = .held
            default: self = .internalError
            }
        }
    }

    public let code: Code
    public let message: String
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }
    public var description: String { message }
}

/// FNV-1a 64 of the proto sources, the same fingerprint scripts/gen-proto.sh records.
public func protoSourcesFingerprint(root: URL) throws -> String {
    let fm = FileManager.default
    let protoDir = root.appendingPathComponent("proto")
    var paths: [String] = []
    if let e = fm.enumerator(atPath: protoDir.path) {
        for case let p as String in e where p.hasSuffix(".proto") { paths.append("proto/" + p) }
    }
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for path in paths.sorted() {
        let bytes = Array(path.utf8) + Array(try Data(contentsOf: root.appendingPathComponent(path)))
        for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
    }
    let hex = String(h, radix: 16)
    return String(repeating: "0", count: 16 - hex.count) + hex
}
