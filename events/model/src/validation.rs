//! Field errors of parsed input: each names its field by a JSON path such as `mother.personal_id`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One refused input field: where (`mother.personal_id`), a stable code, and a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// A JSON path into the input, e.g. `child.date_of_birth` or `procedures[1]`.
    pub field: String,
    /// A stable machine-readable code, e.g. `required`, `unknown_province`.
    pub code: String,
    /// A lowercase human message without trailing period.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, code: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            code: code.to_owned(),
            message: message.into(),
        }
    }

    /// The field is missing or null.
    pub fn required(field: impl Into<String>) -> Self {
        Self::new(field, "required", "is required")
    }

    /// The same error, moved under `prefix` (`personal_id` becomes `mother.personal_id`).
    #[must_use]
    pub fn under(mut self, prefix: &str) -> Self {
        self.field = join_path(prefix, &self.field);
        self
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Joins two parts of a JSON path: `join_path("mother", "personal_id")` is `mother.personal_id`.
pub fn join_path(prefix: &str, field: &str) -> String {
    match (prefix.is_empty(), field.is_empty()) {
        (true, _) => field.to_owned(),
        (_, true) => prefix.to_owned(),
        _ if field.starts_with('[') => format!("{prefix}{field}"),
        _ => format!("{prefix}.{field}"),
    }
}

/// Every field error of one input, in the order found. Never empty when returned as an error.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(transparent)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid input: ")?;
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl ValidationErrors {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn push(&mut self, error: FieldError) {
        self.0.push(error);
    }

    /// The fields named, in order (handy in tests and for the `fields` of an HTTP error body).
    pub fn fields(&self) -> Vec<&str> {
        self.0.iter().map(|error| error.field.as_str()).collect()
    }

    /// The error of `field`, if any.
    pub fn get(&self, field: &str) -> Option<&FieldError> {
        self.0.iter().find(|error| error.field == field)
    }

    /// Keeps the value of a parse, or records its error and yields `None`.
    pub fn take<T>(&mut self, result: Result<T, FieldError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.0.push(error);
                None
            }
        }
    }

    /// Ok when nothing was recorded.
    pub fn into_result<T>(self, value: T) -> Result<T, ValidationErrors> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

impl From<FieldError> for ValidationErrors {
    fn from(error: FieldError) -> Self {
        Self(vec![error])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_and_errors_display_every_field() {
        assert_eq!(join_path("mother", "personal_id"), "mother.personal_id");
        assert_eq!(join_path("procedures", "[1]"), "procedures[1]");
        assert_eq!(join_path("", "office"), "office");
        let errors = ValidationErrors(vec![
            FieldError::required("office"),
            FieldError::new("personal_id", "length", "must have 12 digits").under("mother"),
        ]);
        assert_eq!(
            errors.to_string(),
            "invalid input: office: is required; mother.personal_id: must have 12 digits"
        );
        assert_eq!(errors.fields(), ["office", "mother.personal_id"]);
    }
}
