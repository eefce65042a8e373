import Generation
import HTTPTypes
import JSON

/// An error as the OpenAI API words it: `{"error": {"message", "type", "param", "code"}}` with the HTTP status
/// that says whose fault it is (400 the request's, 401 the key's, 503 the server's state, 500 ours).
public struct APIError: Error, CustomStringConvertible, Sendable {
    public let status: HTTPResponse.Status
    public let message: String
    public let type: String
    public let param: String?
    public let code: String?
    /// Seconds a client should wait before retrying (`Retry-After`), for 429 and 503.
    public var retryAfter: Int?

    public init(status: HTTPResponse.Status, message: String, type: String, param: String? = nil, code: String? = nil) {
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
    }

    public var description: String { message }

    public static func invalid(_ message: String, param: String? = nil, code: String? = nil) -> APIError {
        APIError(status: .badRequest, message: message, type: "invalid_request_error", param: param, code: code)
    }

    public static let unauthorized = APIError(status: .unauthorized, message: "Invalid API key: send it as 'Authorization: Bearer KEY' (or 'x-api-key: KEY'; the server was started with --api-key)",
                                              type: "authentication_error", code: "invalid_api_key")

    public static func unavailable(_ message: String) -> APIError {
        APIError(status: .serviceUnavailable, message: message, type: "unavailable_error", code: "unavailable")
    }

    public static func `internal`(_ message: String) -> APIError {
        APIError(status: .internalServerError, message: message, type: "server_error", code: "internal_error")
    }

    /// The generation layer's error classes, as HTTP answers them (`param`: the field a request error is about).
    public init(_ e: GenerationError, param: String? = nil) {
        switch e.code {
        case .invalidRequest: self = .invalid(e.message, param: param)
        case .contextExceeded: self = .invalid(e.message, param: param, code: "context_length_exceeded")
        case .unavailable: self = .unavailable(e.message)
        case .overloaded:
            self = APIError(status: .tooManyRequests, message: e.message, type: "rate_limit_error", code: "rate_limit_exceeded")
            retryAfter = 1
        case .internal: self = .internal(e.message)
        }
    }

    public var json: JSONValue {
        .object([("error", .object([
            ("message", .string(message)), ("type", .string(type)),
            ("param", param.map(JSONValue.string) ?? .null), ("code", code.map(JSONValue.string) ?? .null),
        ]))])
    }
}
