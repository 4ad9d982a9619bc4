//! How the store's errors reach an app: each variant of the domain's error
//! enums maps to one [`ErrorCode`] here, and nowhere else.

use crate::domain::{StoreError, WriteError};

use super::wire::{ApiError, ErrorCode};

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        let code = match &e {
            WriteError::NotFound { .. }
            | WriteError::NoParkedConflict { .. }
            | WriteError::NoDeadLetter { .. } => ErrorCode::NotFound,
            WriteError::TooLarge { .. } => ErrorCode::TooLarge,
            WriteError::ResolveNeedsChoice => ErrorCode::BadRequest,
            WriteError::ShuttingDown => ErrorCode::ShuttingDown,
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
        let io = StoreError::Io(std::io::Error::from_raw_os_error(28));
        let e = ApiError::from(WriteError::from(io));
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(e.message.contains("disk full"), "{}", e.message);
    }
}
