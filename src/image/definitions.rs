//! `imagedefinitions.json`, the file CodePipeline's ECS deploy action reads: which image each
//! container runs. The dry run shows the same JSON that the run writes.

use std::path::Path;

use crate::error::Error;

/// One entry of the file, its fields in the order of AWS's documentation.
#[derive(serde::Serialize)]
struct Entry<'a> {
    name: &'a str,
    #[serde(rename = "imageUri")]
    image_uri: &'a str,
}

/// The file's content on one line: one container and its image, as CodePipeline expects.
pub fn render(container: &str, image_uri: &str) -> String {
    serde_json::to_string(&[Entry { name: container, image_uri }]).unwrap_or_default()
}

/// Writes the file atomically (a deploy never reads half of it).
pub fn write(path: &Path, container: &str, image_uri: &str) -> Result<(), Error> {
    let pretty = serde_json::to_string_pretty(&[Entry { name: container, image_uri }]).unwrap_or_default();
    let text = format!("{pretty}\n");
    crate::files::write_atomically(path, text.as_bytes(), 0o644, true, "the working directory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_as_json() {
        let json = render("we\"b", "repo:tag");
        assert_eq!(json, r#"[{"name":"we\"b","imageUri":"repo:tag"}]"#);
    }
}
