//! The errors of natd's core, by class: the class decides the HTTP status (400, 404, 409,
//! 500), the message is what the user reads (Docker's wording where Docker has one), and
//! the source error is kept for the logs.
use crate::{
    dataplane::DataplaneError,
    state::StateError,
    sys::{netlink::NetlinkError, netns::NetnsError},
};

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request is wrong (400).
    Invalid,
    /// It names something that does not exist (404).
    NotFound,
    /// It conflicts with what exists (409).
    Conflict,
    /// natd or the kernel failed (500).
    Internal,
    /// A service natd depends on (the cluster store) cannot be reached (503).
    Unavailable,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{message}")]
    Classified {
        class: ErrorClass,
        message: String,
        #[source]
        source: Option<Source>,
    },
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
}

pub type Result<T, E = DaemonError> = std::result::Result<T, E>;

impl DaemonError {
    pub fn class(&self) -> ErrorClass {
        match self {
            DaemonError::Classified { class, .. } => *class,
            _ => ErrorClass::Internal,
        }
    }

    fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        DaemonError::Classified {
            class,
            message: message.into(),
            source: None,
        }
    }

    /// Keeps `source` behind this error; its text is added to the message.
    pub fn because(self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        match self {
            DaemonError::Classified { class, message, .. } => DaemonError::Classified {
                class,
                message: format!("{message}: {source}"),
                source: Some(Box::new(source)),
            },
            other => other,
        }
    }
}

pub fn invalid(message: impl Into<String>) -> DaemonError {
    DaemonError::new(ErrorClass::Invalid, message)
}

pub fn not_found(message: impl Into<String>) -> DaemonError {
    DaemonError::new(ErrorClass::NotFound, message)
}

pub fn conflict(message: impl Into<String>) -> DaemonError {
    DaemonError::new(ErrorClass::Conflict, message)
}

pub fn unavailable(message: impl Into<String>) -> DaemonError {
    DaemonError::new(ErrorClass::Unavailable, message)
}

pub fn internal(message: impl Into<String>) -> DaemonError {
    DaemonError::new(ErrorClass::Internal, message)
}
