//! Streaming detokenization: text is released only once it is whole.
//!
//! Decoding token by token breaks two things: a character spelled by several byte-fallback
//! tokens would print as U+FFFD halves, and SentencePiece drops the leading space of whatever
//! it decodes first. So each step decodes a short window of recent tokens twice — with and
//! without the new ones — and emits the difference, holding it back while it ends in an
//! incomplete character.

use crate::tokenizer::Tokenizer;

pub struct StreamDecoder {
    ids: Vec<u32>,
    /// Start of the context window used for decoding.
    prefix: usize,
    /// Tokens before this index have been emitted.
    read: usize,
}

impl StreamDecoder {
    /// `context` is the prompt (or its tail): it fixes the spacing of the first new token.
    pub fn new(context: &[u32]) -> Self {
        let keep = context.len().min(6);
        let ids = context[context.len() - keep..].to_vec();
        Self {
            prefix: 0,
            read: ids.len(),
            ids,
        }
    }

    /// Adds a token; returns the text it completes, if any.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Option<String> {
        self.ids.push(id);
        let (before, now) = self.texts(tok);
        if now.len() <= before.len() || now.ends_with('\u{FFFD}') || !now.starts_with(&before) {
            return None;
        }
        let text = now[before.len()..].to_string();
        self.prefix = self.read;
        self.read = self.ids.len();
        Some(text)
    }

    /// The window's text without and with the unread tokens. A character left incomplete by
    /// the emitted tokens (a prompt ending in the middle of one) decodes as U+FFFD; it is not
    /// part of what was printed, so it is dropped for the comparison.
    fn texts(&self, tok: &Tokenizer) -> (String, String) {
        let mut before = tok.decode(&self.ids[self.prefix..self.read]);
        while before.ends_with('\u{FFFD}') {
            before.pop();
        }
        (before, tok.decode(&self.ids[self.prefix..]))
    }

    /// Whatever is still held back at the end of generation.
    pub fn flush(&mut self, tok: &Tokenizer) -> Option<String> {
        let (before, now) = self.texts(tok);
        self.read = self.ids.len();
        (now.len() > before.len() && now.starts_with(&before))
            .then(|| now[before.len()..].to_string())
    }
}
