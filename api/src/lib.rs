//! minivmm's control API: HTTP/1.1 and JSON on a Unix socket, serving one [`vmm::Vm`].
//!
//! Only front-ends speak HTTP, so all of it lives here and the VMM knows nothing of it: a
//! request becomes a call on the VM's handle (pause, resume, power button, stop, info,
//! counters, snapshot), and the answer or the VMM's error becomes JSON. The endpoints and
//! their bodies are described in `docs/api.json` (OpenAPI 3), which a test checks against
//! [`routes::ROUTES`] and against a running server.
//!
//! | module | owns |
//! |---|---|
//! | [`http`] | a small, strict HTTP/1.1 request parser (with size limits) and response writer |
//! | [`routes`] | paths and methods, what each does with the VM, errors to status codes |
//! | [`server`] | the socket (mode 0600, stale files replaced, removed at the end) and the thread that serves it |
//! | [`client`] | one request from the command line's client subcommands |
//!
//! The front-end binds the socket ([`ApiServer::bind`]) before it builds the VM, so that a
//! path in use is bad input found before anything exists, and runs
//! [`ApiServer::serve`] on a thread of its own once the VM has started. That thread
//! installs its seccomp filter (`ThreadKind::Api`) first thing.
#![deny(missing_docs)]

pub mod client;
pub mod http;
pub mod routes;
pub mod server;

pub use server::ApiServer;

/// What can go wrong with the API socket, on the server's side or the client's.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Another process listens on the path.
    #[error("--api-sock {0}: something is listening there already")]
    InUse(String),
    /// The path is a file other than a socket (never replaced).
    #[error("--api-sock {0}: exists and is not a socket")]
    NotASocket(String),
    /// The socket could not be created at the path.
    #[error("--api-sock {path}: {source}")]
    Bind {
        /// The path as given.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A host resource of the server failed.
    #[error("API server: {0}: {1}")]
    Io(&'static str, #[source] std::io::Error),
    /// The API thread's seccomp filter could not be installed.
    #[error("API server: {0}")]
    Seccomp(#[from] vmm::seccomp::SeccompError),
    /// The client could not connect.
    #[error("--api-sock {path}: cannot connect: {source}")]
    Connect {
        /// The path as given.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The client's request or the answer was cut off or timed out.
    #[error("--api-sock {path}: {what}: {source}")]
    Exchange {
        /// The path as given.
        path: String,
        /// The step.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The answer was not an HTTP response with a JSON body.
    #[error("--api-sock {path}: the answer is not the API's: {source}")]
    BadAnswer {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        #[source]
        source: http::HttpError,
    },
}

impl ApiError {
    /// Whether the user's input is at fault (exit code 2): a path in use, not a socket,
    /// in a missing directory, or with nobody listening.
    pub fn is_bad_input(&self) -> bool {
        match self {
            ApiError::InUse(_) | ApiError::NotASocket(_) => true,
            ApiError::Bind { source, .. } | ApiError::Connect { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::InvalidInput
                    | std::io::ErrorKind::AddrInUse
                    | std::io::ErrorKind::NotADirectory
                    | std::io::ErrorKind::ReadOnlyFilesystem
            ),
            _ => false,
        }
    }
}
