//! Ids and names are checked at the edge, before they reach a query or the object store: an id
//! is 1..=128 of `[A-Za-z0-9._:@+-]`; a display name is 1..=128 characters, none a control
//! character.

use super::error::{quoted, ApiError, ApiResult};

pub const MAX_ID_CHARS: usize = 128;

pub fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._:@+-".contains(c)
}

/// `id` (of a job, model, data set, ...) is well-formed, or a 400 naming `param`.
pub fn check_id(param: &str, id: &str) -> ApiResult<()> {
    if id.is_empty() || id.len() > MAX_ID_CHARS || !id.chars().all(is_id_char) {
        return Err(ApiError::invalid(
            "invalid_id",
            format!(
                "{param} {} is not an id: 1 to {MAX_ID_CHARS} of A-Z a-z 0-9 . _ : @ + -",
                quoted(id)
            ),
        )
        .param(param));
    }
    Ok(())
}

/// A free-text display name: 1..=128 characters, no control characters.
pub fn check_name(param: &str, name: &str) -> ApiResult<()> {
    let n = name.chars().count();
    if n == 0 || n > MAX_ID_CHARS || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "invalid_name",
            format!("{param} must be 1 to {MAX_ID_CHARS} characters without control characters"),
        )
        .param(param));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names() {
        assert!(check_id("id", "pj-0123abc").is_ok());
        assert!(check_id("id", "SmolLM2-135M-Instruct.Q4_1").is_ok());
        for bad in ["", "pj-\0", "a/b", "é", &"x".repeat(129)] {
            assert_eq!(
                check_id("id", bad).unwrap_err().code,
                "invalid_id",
                "{bad:?}"
            );
        }
        assert!(check_name("name", "my data, v2 é").is_ok());
        assert!(check_name("name", "a\0b").is_err());
    }
}
