//! The typed error of model loading.

use std::fmt;
use std::path::PathBuf;

/// Why a model could not be loaded.
///
/// Loading never panics: every malformed, truncated or unsupported input ends in one of these.
#[derive(Debug)]
#[non_exhaustive]
pub enum ModelError {
    /// The model file could not be read.
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The bytes are neither XGBoost JSON (starts with `{`) nor LightGBM text (starts with `tree`).
    UnknownFormat,
    /// XGBoost JSON that does not parse or does not have the `save_model` shape.
    Json {
        /// Where in the document (e.g. `learner.gradient_booster.model.trees[3].split_indices`).
        path: String,
        /// 1-based line of the error (0 when serde_json could not tell).
        line: usize,
        /// 1-based column of the error (0 when serde_json could not tell).
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// LightGBM text that does not parse.
    Text {
        /// 1-based line of the offending text (the last line + 1 for a missing part at the end).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A tree whose structure is inconsistent (lengths differ, a child out of range, a cycle,
    /// a node reached twice, a feature index past the model's feature count, a NaN value).
    InvalidTree {
        /// 0-based index of the tree in the file.
        tree: usize,
        /// 1-based line where the tree starts (LightGBM), if known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// A valid model using something this crate does not score (multiclass, categorical splits,
    /// linear trees, DART, an objective without a known output transform, ...).
    Unsupported {
        /// What is not supported.
        what: String,
    },
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelError::Io { path, source } => write!(f, "cannot read model {}: {source}", path.display()),
            ModelError::UnknownFormat => {
                f.write_str("unknown model format: expected XGBoost JSON or LightGBM text")
            }
            ModelError::Json { path, message, .. } => {
                if path.is_empty() || path == "." {
                    write!(f, "invalid XGBoost JSON model: {message}")
                } else {
                    write!(f, "invalid XGBoost JSON model at {path}: {message}")
                }
            }
            ModelError::Text { line, message } => {
                write!(f, "invalid LightGBM model, line {line}: {message}")
            }
            ModelError::InvalidTree { tree, line: Some(line), message } => {
                write!(f, "invalid tree {tree} (line {line}): {message}")
            }
            ModelError::InvalidTree { tree, line: None, message } => {
                write!(f, "invalid tree {tree}: {message}")
            }
            ModelError::Unsupported { what } => write!(f, "unsupported model: {what}"),
        }
    }
}

impl std::error::Error for ModelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ModelError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
