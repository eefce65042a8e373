import Foundation
import Testing
import TestSupport
@testable import Wire

struct MessageTests {
    func hello() -> Envelope {
        var e = Envelope()
        e.requestID = 42
        var h = Conclave_V1_Hello()
        h.workerName = "w1"
        h.memoryBudget = 8 << 30
        h.cores = 2
        e.hello = h
        return e
    }

    @Test func roundTripWithTensorFrames() throws {
        var e = Envelope()
        e.requestID = 7
        e.sequenceIds = [1, 2]
        var call = Conclave_V1_ExpertCall()
        call.layer = 3
        var route = Conclave_V1_Route()
        route.row = 0
        route.experts = [5, 1]
        route.weights = [0.75, 0.25]
        route.slots = [0, 1]
        call.routes = [route]
        e.expertCall = call
        let rows = Data((0..<(2 * 256 * 4)).map { UInt8(truncatingIfNeeded: $0) })
        let msg = WireMessage.make(e, tensors: [(.f32, [2, 256], rows)])
        let parts = try msg.encode()
        #expect(parts.count == 2 && parts[1] == rows)  // the tensor travels as its own frame, untouched
        let back = try WireMessage.decode(parts)
        #expect(back.envelope == msg.envelope)
        #expect(back.envelope.expertCall.routes[0].experts == [5, 1])
        #expect(back.frames == [rows])
        #expect(back.envelope.protocolVersion == WireMessage.protocolVersion)
    }

    @Test func badMessagesAreTypedErrors() throws {
        let good = try WireMessage.make(hello()).encode()
        func expect(_ parts: [Data], _ code: WireError.Code, max: Int = 1 << 30, sourceLocation: SourceLocation = #_sourceLocation) {
            do {
                _ = try WireMessage.decode(parts, maxBytes: max)
                Issue.record("accepted a bad message", sourceLocation: sourceLocation)
            } catch {
                #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
            }
        }
        expect([], .malformed)
        expect([Data([0xFF, 0xFF, 0xFF])], .malformed)  // not protobuf
        expect([good[0].prefix(good[0].count - 1)], .malformed)  // truncated envelope
        expect(good, .tooLarge, max: 4)
        var old = hello()
        old.protocolVersion = 99
        expect([try old.serializedData()], .versionMismatch)
        expect([try Envelope().serializedData()], .versionMismatch)  // no version at all
        var e = hello()
        e.protocolVersion = WireMessage.protocolVersion
        expect([try e.serializedData(), Data([1, 2, 3])], .malformed)  // a frame nobody described
        let wrongSize = WireMessage.make(hello(), tensors: [(.f32, [4], Data(count: 15))])
        expect(try wrongSize.encode(), .malformed)
        var noKind = Envelope()
        noKind.protocolVersion = WireMessage.protocolVersion
        expect([try noKind.serializedData()], .malformed)
        // Quantized rows: whole blocks along the last dimension, each block its exact bytes.
        expect(try WireMessage.make(hello(), tensors: [(.q80, [1, 100], Data(count: 100))]).encode(), .malformed)
        expect(try WireMessage.make(hello(), tensors: [(.q80, [2, 64], Data(count: 4 * 34 - 1))]).encode(), .malformed)
        expect(try WireMessage.make(hello(), tensors: [(.q8K, [1, 256], Data(count: 256))]).encode(), .malformed)
        expect(try WireMessage.make(hello(), tensors: [(.q80, [UInt64.max >> 1, 64].map(Int.init), Data(count: 34))]).encode(), .malformed)
    }

    /// Q8_0 rows are 34 bytes per 32 values and Q8_K rows 292 per 256, as ggml lays them out.
    @Test func quantizedFramesHaveTheirBlockSizes() throws {
        #expect(WireMessage.frameBytes(.q80, shape: [2, 2048]) == 2 * 64 * 34)
        #expect(WireMessage.frameBytes(.q8K, shape: [3, 512]) == 3 * 2 * 292)
        #expect(WireMessage.frameBytes(.f32, shape: [2, 5]) == 40)
        #expect(WireMessage.frameBytes(.q80, shape: [1, 33]) == nil)
        let parts = try WireMessage.make(hello(), tensors: [(.q80, [2, 64], Data(count: 4 * 34))]).encode()
        #expect(try WireMessage.decode(parts).frames[0].count == 136)
    }

    @Test func errorReplyCarriesCodeAndMessage() throws {
        let reply = WireMessage.errorReply(to: 9, WireError(.versionMismatch, "protocol version 99"))
        let back = try WireMessage.decode(try reply.encode())
        #expect(back.envelope.requestID == 9)
        #expect(back.envelope.error.code == .versionMismatch)
        #expect(back.envelope.error.message.contains("99"))
    }

    /// The committed generated code was made from the committed .proto files (scripts/gen-proto.sh).
    @Test func generatedCodeIsCurrent() throws {
        #expect(try protoSourcesFingerprint(root: Fixtures.root) == ProtoFingerprint.fnv1a64,
                "proto/ changed since Sources/Wire/Generated was made: run scripts/gen-proto.sh and commit")
    }
}
