//! Chat templates: a model's own Jinja template (tokenizer_config.json's `chat_template`, or a
//! GGUF's `tokenizer.chat_template`) renders a conversation into the prompt text, as HF's
//! `apply_chat_template(..., add_generation_prompt=True)` does (minijinja with Python-style
//! string methods).

use minijinja::{context, Environment, Error, ErrorKind};
use serde::Serialize;

use crate::{EngineError, Result};

/// A model's chat template and the special-token strings templates refer to.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatTemplate {
    pub source: String,
    pub bos_token: String,
    pub eos_token: String,
}

/// One message of a conversation.
#[derive(Clone, Debug, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl ChatTemplate {
    /// The prompt for `messages`, ending where the assistant's answer begins.
    pub fn render(&self, messages: &[Message]) -> Result<String> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", |_fmt: String| String::new());
        let bad = |e: Error| EngineError::InvalidInput(format!("chat template: {e:#}"));
        env.add_template("chat", &self.source).map_err(bad)?;
        let t = env.get_template("chat").map_err(bad)?;
        t.render(context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(bad)
    }
}

/// The template of an HF tokenizer_config.json: `chat_template` as a string, or the one named
/// "default" in a list of `{name, template}`.
pub fn from_tokenizer_config(config: &serde_json::Value) -> Option<ChatTemplate> {
    let source = match &config["chat_template"] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(list) => list
            .iter()
            .find(|t| t["name"] == "default")
            .or(list.first())?["template"]
            .as_str()?
            .to_string(),
        _ => return None,
    };
    let token = |key: &str| match &config[key] {
        serde_json::Value::String(s) => s.clone(),
        v => v["content"].as_str().unwrap_or_default().to_string(),
    };
    Some(ChatTemplate {
        source,
        bos_token: token("bos_token"),
        eos_token: token("eos_token"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_chatml_with_python_methods() {
        let t = ChatTemplate {
            source: "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m['content'].strip() }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}".into(),
            bos_token: "<s>".into(),
            eos_token: "</s>".into(),
        };
        let m = [Message {
            role: "user".into(),
            content: " Hi ".into(),
        }];
        assert_eq!(
            t.render(&m).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let failing = ChatTemplate {
            source: "{{ raise_exception('roles must alternate') }}".into(),
            ..t
        };
        let e = failing.render(&m).unwrap_err().to_string();
        assert!(e.contains("roles must alternate"), "{e}");
    }
}
