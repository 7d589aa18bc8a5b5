//! The web page, embedded at build time (`build.rs` checks the files and installs xterm.js
//! with npm): the static paths the server answers without a token, and their content
//! types. The page is inert without the token, which it takes from the URL's fragment.

/// One embedded file.
pub struct Asset {
    /// Its URL path.
    pub path: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static [u8],
}

macro_rules! web {
    ($f:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/", $f))
    };
}

macro_rules! vendor {
    ($f:literal) => {
        include_bytes!(concat!(env!("OUT_DIR"), "/web-deps/node_modules/", $f))
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every static path.
pub const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: HTML,
        body: web!("index.html"),
    },
    Asset {
        path: "/app.js",
        content_type: JS,
        body: web!("app.js"),
    },
    Asset {
        path: "/app.css",
        content_type: CSS,
        body: web!("app.css"),
    },
    Asset {
        path: "/vendor/xterm.js",
        content_type: JS,
        body: vendor!("@xterm/xterm/lib/xterm.js"),
    },
    Asset {
        path: "/vendor/xterm.css",
        content_type: CSS,
        body: vendor!("@xterm/xterm/css/xterm.css"),
    },
    Asset {
        path: "/vendor/addon-fit.js",
        content_type: JS,
        body: vendor!("@xterm/addon-fit/lib/addon-fit.js"),
    },
];

/// The asset at `path`, if any.
pub fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}
