import Generation
import Model
import Wire

// One failure, one class, on every hop: the wire's Error codes, the generation layer's codes (which the HTTP API
// maps to 400/503/500) and a stage's step errors are translated here and nowhere else.

public extension GenerationError {
    /// A wire error as the generation layer classifies it: the request's fault, the cluster's state, or a bug.
    init(wire e: WireError, _ prefix: String = "") {
        let code: Code
        switch e.code {
        case .contextExceeded: code = .contextExceeded
        case .overBudget, .unavailable, .unknownWorker, .held: code = .unavailable
        default: code = .internal
        }
        self.init(code, prefix + e.message)
    }
}

public extension WireError {
    /// The generation layer's error on the wire, its class kept.
    init(generation e: GenerationError) {
        switch e.code {
        case .invalidRequest: self.init(.malformed, e.message)
        case .contextExceeded: self.init(.contextExceeded, e.message)
        case .unavailable, .overloaded: self.init(.unavailable, e.message)
        case .internal: self.init(.internalError, e.message)
        }
    }

    /// A stage's failure to run a StageInput, as the coordinator must see it: a full cache is the worker's
    /// budget, a position past the context the request's, a bad row the sender's.
    init(step e: StageSequences.StepError) {
        switch e.kind {
        case .full: self.init(.overBudget, "this worker's --memory: " + e.description)
        case .contextExceeded: self.init(.contextExceeded, e.description)
        case .malformed: self.init(.malformed, "StageInput: " + e.description)
        }
    }
}
