//! How errors reach an app: each variant of the domain's error enums, of
//! the codec's and of the framing's maps to one [`ErrorCode`] here, and
//! nowhere else; nothing decides by the text of a message.

use crate::domain::{StoreError, WriteError};

use super::codec::CodecError;
use super::connection::FrameError;
use super::wire::{ApiError, ErrorCode};

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        let code = match &e {
            WriteError::NotFound { .. }
            | WriteError::NoParkedConflict { .. }
            | WriteError::NoDeadLetter { .. }
            | WriteError::NoAttachment { .. } => ErrorCode::NotFound,
            WriteError::AttachmentsManaged { .. } | WriteError::BadAttachment(_) => {
                ErrorCode::BadRequest
            }
            WriteError::TooLarge { .. } => ErrorCode::TooLarge,
            WriteError::ResolveNeedsChoice => ErrorCode::BadRequest,
            WriteError::ShuttingDown => ErrorCode::ShuttingDown,
            WriteError::ConflictPending { .. } => ErrorCode::Conflict,
            WriteError::ReadOnlyCollection { .. } => ErrorCode::ReadOnlyCollection,
            WriteError::LocalCollection { .. } => ErrorCode::LocalCollection,
            WriteError::QueuedByAnotherUser { .. } => ErrorCode::PermissionDenied,
            WriteError::Storage(_) => ErrorCode::Internal,
            // A variant added later is the daemon's own failure until it
            // gets a code of its own.
            #[allow(unreachable_patterns)]
            _ => ErrorCode::Internal,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::new(ErrorCode::Internal, e.to_string())
    }
}

/// The answer (with id 0) to a request frame that could not be decoded;
/// the connection goes on with the next frame.
pub fn undecodable_request(e: &CodecError) -> ApiError {
    let code = match e {
        // Well-formed JSON of the wrong shape is a bad request, not bad JSON.
        CodecError::WrongShape(_) => ErrorCode::BadRequest,
        CodecError::InvalidJson(_) | CodecError::InvalidDocument(_) => ErrorCode::InvalidJson,
        _ => ErrorCode::BadFrame,
    };
    ApiError::new(code, format!("undecodable request: {e}"))
}

/// The last word (with id 0) on a stream whose framing broke, or `None`
/// when the stream itself failed and nothing can be said on it.
pub fn broken_stream(e: &FrameError) -> Option<ApiError> {
    let code = match e {
        FrameError::Io(_) => return None,
        // Only a send fails to encode; nothing is wrong with the stream.
        FrameError::Encode(_) => ErrorCode::Internal,
        // The peer may have only half-closed: tell it why.
        FrameError::Truncated => ErrorCode::BadFrame,
        // The rest of the stream is unframed garbage now.
        FrameError::TooLarge { .. } => ErrorCode::TooLarge,
    };
    Some(ApiError::new(code, format!("{e}; closing the connection")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_write_error_has_its_code() {
        let nf = WriteError::NotFound {
            collection: "t".into(),
            id: "x".into(),
        };
        assert_eq!(ApiError::from(nf).code, ErrorCode::NotFound);
        let big = WriteError::TooLarge {
            bytes: 10,
            limit: 5,
        };
        assert_eq!(ApiError::from(big).code, ErrorCode::TooLarge);
        assert_eq!(
            ApiError::from(WriteError::ResolveNeedsChoice).code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            ApiError::from(WriteError::ShuttingDown).code,
            ErrorCode::ShuttingDown
        );
        let ro = ApiError::from(WriteError::ReadOnlyCollection {
            collection: "prices".into(),
        });
        assert_eq!(ro.code, ErrorCode::ReadOnlyCollection);
        assert!(
            ro.message.contains("prices") && ro.message.contains("sync = \"pull\""),
            "{}",
            ro.message
        );
        let io = StoreError::Io(std::io::Error::from_raw_os_error(28));
        let e = ApiError::from(WriteError::from(io));
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(e.message.contains("disk full"), "{}", e.message);
    }
}
