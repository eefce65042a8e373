import Model
import Wire

extension SamplingParams {
    public init(_ s: Conclave_V1_Sampling) {
        self.init()
        temperature = s.temperature
        topK = Int(s.topK)
        topP = s.topP
        minP = s.minP
        repeatPenalty = s.repeatPenalty
        seed = s.seed
        frequencyPenalty = s.frequencyPenalty
        presencePenalty = s.presencePenalty
        if s.repeatLastN > 0 { repeatLastN = Int(min(s.repeatLastN, 1 << 20)) }
        // Checked with the rest by `problem` (size) and by the last stage's compiler (syntax).
        grammar = s.grammar.isEmpty ? nil : s.grammar
        grammarStart = Int(s.grammarStart)
    }

    public var wire: Conclave_V1_Sampling {
        var s = Conclave_V1_Sampling()
        s.temperature = temperature
        s.topK = UInt32(clamping: topK)  // beyond the vocabulary is every token
        s.topP = topP
        s.minP = minP
        s.repeatPenalty = repeatPenalty
        s.seed = seed
        s.frequencyPenalty = frequencyPenalty
        s.presencePenalty = presencePenalty
        s.repeatLastN = UInt32(clamping: repeatLastN)
        s.grammar = grammar ?? ""
        s.grammarStart = UInt32(clamping: grammarStart)
        return s
    }
}
