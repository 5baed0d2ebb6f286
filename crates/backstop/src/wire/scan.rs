//! A strict, allocation-free JSON cursor for the hot decoders of stream chunks.
//!
//! serde's derived deserializers spent most of the gateway's instructions on the
//! 20-odd chunks of every streamed answer (field-name visitors, `Option` and `Vec`
//! layers, one `ignore_value` per unknown field). A chunk decoder built on this cursor
//! walks the text once, borrows what it keeps and skips the rest.
//!
//! Every method returns `None` for anything it does not accept, and the caller then
//! hands the whole chunk to its general (serde) decoder. So the cursor may be stricter
//! than serde_json, never looser: whatever it accepts is valid JSON (grammar, string
//! escapes, no control characters in strings, nothing after the value).

use std::borrow::Cow;

/// The bytes that end a run of plain string content: quote, backslash, control characters.
static STOPS: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// The position of the first quote, backslash or control character at or after `pos`
/// (`None` when there is none). Eight bytes at a time while eight are left: a word
/// with none of them is skipped in a dozen instructions (the classic has-zero-byte
/// test, whose lowest flagged byte is always exact), the tail a byte at a time. Past
/// two plain words (a long string: a prompt, an answer), [`long_stop_at`] goes on.
#[inline(always)]
pub(crate) fn stop_at(b: &[u8], mut pos: usize) -> Option<usize> {
    for _ in 0..2 {
        let Some(word) = b.get(pos..pos + 8) else {
            return tail_stop_at(b, pos);
        };
        let stops = word_stops(word)?;
        if stops != 0 {
            return Some(pos + (stops.trailing_zeros() / 8) as usize);
        }
        pos += 8;
    }
    long_stop_at(b, pos)
}

/// [`stop_at`] in a long string: blocks of [`BLOCK`] bytes without a stop are skipped
/// first, a few vector instructions each ([`block_has_stop`]), then words find the stop
/// in the block that has one.
#[inline(never)]
fn long_stop_at(b: &[u8], mut pos: usize) -> Option<usize> {
    while let Some(block) = b.get(pos..pos + BLOCK).and_then(|s| s.try_into().ok()) {
        if block_has_stop(block) {
            break;
        }
        pos += BLOCK;
    }
    while let Some(word) = b.get(pos..pos + 8) {
        let stops = word_stops(word)?;
        if stops != 0 {
            return Some(pos + (stops.trailing_zeros() / 8) as usize);
        }
        pos += 8;
    }
    tail_stop_at(b, pos)
}

/// [`stop_at`] in the last bytes (fewer than eight), a byte at a time.
fn tail_stop_at(b: &[u8], pos: usize) -> Option<usize> {
    let n = b.get(pos..)?.iter().position(|&c| STOPS[usize::from(c)])?;
    Some(pos + n)
}

/// The bytes [`stop_at`] tests at once in a long string.
const BLOCK: usize = 32;

/// Whether a block has a quote, backslash or control character. Written for the
/// compiler's vectorizer (SSE2, no branches): a byte is a stop exactly when the least
/// of `c ^ '"'`, `c ^ '\\'` and `c - 0x1f` (saturating) is 0, so the block has one
/// exactly when the least over all its bytes is 0 (a vector minimum, then a horizontal
/// one; other shapes of this loop, such as a lane-wise minimum tested lane by lane,
/// were compiled to a byte at a time).
#[inline(always)]
fn block_has_stop(block: &[u8; BLOCK]) -> bool {
    let least = block.iter().fold(u8::MAX, |least, &c| {
        least.min((c ^ b'"').min(c ^ b'\\').min(c.saturating_sub(0x1f)))
    });
    least == 0
}

/// The stop bytes of an eight-byte word, each flagged by its high bit (the lowest
/// flag is exact; flags above it may be false). `None` when `word` is not eight bytes.
#[inline(always)]
fn word_stops(word: &[u8]) -> Option<u64> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = ONES * 0x80;
    let w = u64::from_le_bytes(word.try_into().ok()?);
    let quote = w ^ (ONES * u64::from(b'"'));
    let backslash = w ^ (ONES * u64::from(b'\\'));
    let stops = (quote.wrapping_sub(ONES) & !quote)
        | (backslash.wrapping_sub(ONES) & !backslash)
        | (w.wrapping_sub(ONES * 0x20) & !w);
    Some(stops & HIGH)
}

/// Where the JSON string whose content starts at `pos` (just after its opening quote)
/// ends: its closing quote's position, and whether it has escapes. `None` when it is
/// not a valid JSON string (a control character, a bad escape, no closing quote). The
/// bytes are not checked as UTF-8.
fn string_end(b: &[u8], mut pos: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    loop {
        pos = stop_at(b, pos)?;
        match b[pos] {
            b'"' => return Some((pos, escaped)),
            b'\\' => escaped = true,
            _ => return None, // a control character
        }
        pos += 1;
        match *b.get(pos)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
            b'u' => {
                let hex = b.get(pos + 1..pos + 5)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                pos += 4;
            }
            _ => return None,
        }
        pos += 1;
    }
}

/// [`string_end`], a string whose closing quote is the first stop byte of its first
/// eight bytes (a word of text, a short padding) read inline: the same word test as
/// [`stop_at`], so it ends where `string_end` would.
#[inline(always)]
fn short_string_end(b: &[u8], pos: usize) -> Option<(usize, bool)> {
    if let Some(word) = b.get(pos..pos + 8) {
        let stops = word_stops(word)?;
        if stops != 0 {
            let end = pos + (stops.trailing_zeros() / 8) as usize;
            if b[end] == b'"' {
                return Some((end, false));
            }
        }
    }
    string_end(b, pos)
}

/// [`string_end`], a string whose closing quote is the first stop byte within its
/// first three words (ids, names, short texts) read inline: the same word test as
/// [`stop_at`], so it ends where `string_end` would; any other goes on with
/// `string_end` from the word holding the first stop byte (none before it, so no
/// escape either).
#[inline(always)]
fn inline_string_end(b: &[u8], start: usize) -> Option<(usize, bool)> {
    let mut at = start;
    while at < start + 24
        && let Some(word) = b.get(at..at + 8)
    {
        let stops = word_stops(word)?;
        if stops != 0 {
            let end = at + (stops.trailing_zeros() / 8) as usize;
            if b.get(end) == Some(&b'"') {
                return Some((end, false));
            }
            break;
        }
        at += 8;
    }
    string_end(b, at)
}

/// A key as compact JSON writes it, quotes and colon included (`"id":`), to compare
/// with the text sixteen bytes at a time: [`Cursor::object_expecting`]. Where
/// the text holds these bytes, [`Cursor::key`] reads this key there (its first stop
/// byte is the closing quote, the colon follows it) and stops where they end.
pub(crate) struct Key {
    name: &'static str,
    /// The first 16 bytes (zeros after a shorter key), little-endian, and the mask of
    /// those that are the key's.
    head: u128,
    head_mask: u128,
    /// Bytes 16 to 31, the same way (zero masks for a key of 16 bytes or fewer).
    tail: u128,
    tail_mask: u128,
    /// How many bytes (quotes and colon included).
    len: usize,
}

impl Key {
    /// `name`: printable ASCII without quote or backslash, at most 29 bytes (checked
    /// when the constant is made).
    pub(crate) const fn new(key: &'static str) -> Key {
        let name = key.as_bytes();
        let len = name.len() + 3;
        assert!(len <= 32, "key too long");
        let mut bytes = [0u8; 32];
        bytes[0] = b'"';
        let mut i = 0;
        while i < name.len() {
            let c = name[i];
            assert!(
                c >= b' ' && c < 0x7f && c != b'"' && c != b'\\',
                "not a plain key"
            );
            bytes[i + 1] = c;
            i += 1;
        }
        bytes[len - 2] = b'"';
        bytes[len - 1] = b':';
        let (mut head, mut tail) = ([0u8; 16], [0u8; 16]);
        let (mut head_mask, mut tail_mask) = ([0u8; 16], [0u8; 16]);
        let mut j = 0;
        while j < 16 {
            head[j] = bytes[j];
            tail[j] = bytes[16 + j];
            if j < len {
                head_mask[j] = 0xff;
            }
            if 16 + j < len {
                tail_mask[j] = 0xff;
            }
            j += 1;
        }
        Key {
            name: key,
            head: u128::from_le_bytes(head),
            head_mask: u128::from_le_bytes(head_mask),
            tail: u128::from_le_bytes(tail),
            tail_mask: u128::from_le_bytes(tail_mask),
            len,
        }
    }

    /// Whether `b` holds this key's bytes at `pos` (`false` also when fewer than 16
    /// bytes, or 32 for a key longer than 16, are left there: the key is then read as
    /// any other).
    #[inline(always)]
    fn is_at(&self, b: &[u8], pos: usize) -> bool {
        let block = |at: usize| {
            b.get(at..at + 16)
                .and_then(|w| <[u8; 16]>::try_from(w).ok())
                .map(u128::from_le_bytes)
        };
        let Some(head) = block(pos) else {
            return false;
        };
        if (head ^ self.head) & self.head_mask != 0 {
            return false;
        }
        if self.tail_mask == 0 {
            return true;
        }
        block(pos + 16).is_some_and(|tail| (tail ^ self.tail) & self.tail_mask == 0)
    }
}

/// Nesting deeper than this is left to serde (which has its own limit of 128).
const MAX_DEPTH: usize = 64;

pub(crate) struct Cursor<'a> {
    src: &'a str,
    pos: usize,
}

/// A string as it appears in the text (between the quotes, escapes not decoded).
#[derive(Clone, Copy)]
pub(crate) struct RawStr<'a> {
    raw: &'a str,
    escaped: bool,
}

/// A string by where it is written (between the quotes, escapes not decoded): the
/// [`RawStr`] of any text with the same bytes there.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StrAt {
    start: usize,
    end: usize,
    escaped: bool,
}

impl StrAt {
    /// The string in `src`: `None` when `src` is not long enough (or not cut at
    /// character boundaries there).
    pub(crate) fn of(self, src: &str) -> Option<RawStr<'_>> {
        Some(RawStr {
            raw: src.get(self.start..self.end)?,
            escaped: self.escaped,
        })
    }
}

impl<'a> RawStr<'a> {
    /// The string's value: borrowed when it has no escapes.
    #[inline]
    pub(crate) fn text(self) -> Option<Cow<'a, str>> {
        if !self.escaped {
            return Some(Cow::Borrowed(self.raw));
        }
        self.unescaped()
    }

    #[inline(never)]
    fn unescaped(self) -> Option<Cow<'a, str>> {
        // Rare in chunks (newlines, quotes in code): let serde_json decode the escapes
        // (surrogate pairs included) of this one string.
        let quoted = &self.raw_with_quotes();
        serde_json::from_str::<String>(quoted).ok().map(Cow::Owned)
    }

    /// The value of an optional string: `Some(None)` for none, `None` when its escapes
    /// do not decode.
    pub(crate) fn opt_text(s: Option<Self>) -> Option<Option<Cow<'a, str>>> {
        match s {
            None => Some(None),
            Some(s) => s.text().map(Some),
        }
    }

    /// Whether the string is empty (`""`).
    pub(crate) fn is_empty(self) -> bool {
        self.raw.is_empty()
    }

    /// Whether this is exactly `s`, written without escapes.
    pub(crate) fn is(self, s: &str) -> bool {
        !self.escaped && self.raw == s
    }

    /// A key to match on: `None` when written with escapes (serde would decode and
    /// match it; the fast decoders leave such a chunk to the general one).
    pub(crate) fn plain(self) -> Option<&'a str> {
        (!self.escaped).then_some(self.raw)
    }

    fn raw_with_quotes(self) -> String {
        let mut q = String::with_capacity(self.raw.len() + 2);
        q.push('"');
        q.push_str(self.raw);
        q.push('"');
        q
    }
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(src: &'a str) -> Self {
        Cursor { src, pos: 0 }
    }

    /// A cursor at byte `pos` of `src` (where an earlier walk of equal bytes stood).
    pub(crate) fn at(src: &'a str, pos: usize) -> Self {
        Cursor { src, pos }
    }

    fn bytes(&self) -> &'a [u8] {
        self.src.as_bytes()
    }

    /// The byte offset reached in the text.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// The next byte after whitespace, not consumed.
    pub(crate) fn peek(&mut self) -> Option<u8> {
        let b = self.bytes();
        loop {
            let c = *b.get(self.pos)?;
            // Compact JSON: the next byte is rarely whitespace, and none is above b' '.
            if c > b' ' || !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                return Some(c);
            }
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.pos += 1)
    }

    /// Only whitespace is left.
    pub(crate) fn end(&mut self) -> Option<()> {
        self.peek().is_none().then_some(())
    }

    /// Consume `null` if it is next (followed by a delimiter: `nullx` is not, and is
    /// left where it is, so no walk reads on from its `x`).
    pub(crate) fn null(&mut self) -> bool {
        self.peek();
        let p = self.pos;
        if self.bytes().get(p..p + 4) == Some(b"null") {
            self.pos = p + 4;
            if self.delimited() {
                return true;
            }
            self.pos = p;
        }
        false
    }

    /// A literal or number must be followed by a delimiter, not more letters (`nullx`).
    fn delimited(&self) -> bool {
        self.bytes()
            .get(self.pos)
            .is_none_or(|c| matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
    }

    /// A string.
    #[inline]
    pub(crate) fn string(&mut self) -> Option<RawStr<'a>> {
        self.eat(b'"')?;
        let start = self.pos;
        let (end, escaped) = inline_string_end(self.bytes(), start)?;
        // Both ends are ASCII quotes, so the slice is on char boundaries.
        let raw = self.src.get(start..end)?;
        self.pos = end + 1;
        Some(RawStr { raw, escaped })
    }

    /// An object's key and the colon after it. Keys are short and plain: one right at
    /// the cursor is read here with [`inline_string_end`] (a closing quote within
    /// three words found inline, any other string as [`string_end`] reads it); one
    /// after whitespace takes [`Cursor::string`].
    #[inline(always)]
    fn key(&mut self) -> Option<RawStr<'a>> {
        let b = self.bytes();
        if b.get(self.pos) == Some(&b'"') {
            let start = self.pos + 1;
            let (end, escaped) = inline_string_end(b, start)?;
            // Both ends are ASCII quotes, so the slice is on char boundaries.
            let raw = self.src.get(start..end)?;
            self.pos = end + 1;
            if b.get(self.pos) == Some(&b':') {
                self.pos += 1;
            } else {
                self.eat(b':')?;
            }
            return Some(RawStr { raw, escaped });
        }
        let key = self.string()?;
        self.eat(b':')?;
        Some(key)
    }

    /// A string, with where it is written (quotes included): a [`Template`]'s hole.
    pub(crate) fn spanned_string(&mut self) -> Option<(RawStr<'a>, std::ops::Range<usize>)> {
        self.peek()?;
        let start = self.pos;
        let s = self.string()?;
        Some((s, start..self.pos))
    }

    /// A string, or `null` (`None` inside).
    pub(crate) fn opt_string(&mut self) -> Option<Option<RawStr<'a>>> {
        if self.null() {
            return Some(None);
        }
        self.string().map(Some)
    }

    /// [`Cursor::opt_string`], the string given by where it is written.
    pub(crate) fn opt_string_at(&mut self) -> Option<Option<StrAt>> {
        if self.null() {
            return Some(None);
        }
        let s = self.string()?;
        // `string` leaves the cursor just past the closing quote.
        let end = self.pos - 1;
        Some(Some(StrAt {
            start: end - s.raw.len(),
            end,
            escaped: s.escaped,
        }))
    }

    /// An unsigned integer written without fraction or exponent (what serde accepts
    /// for a `u64` field), or `null`.
    pub(crate) fn opt_u64(&mut self) -> Option<Option<u64>> {
        let b = self.bytes();
        // Compact JSON: nearly always a digit right here.
        if !b.get(self.pos).is_some_and(u8::is_ascii_digit) {
            if self.null() {
                return Some(None);
            }
            self.peek();
        }
        let start = self.pos;
        let mut n: u64 = 0;
        while let Some(&c) = b.get(self.pos) {
            if !c.is_ascii_digit() {
                break;
            }
            n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            self.pos += 1;
        }
        let digits = self.pos - start;
        // No digits, a leading zero, or a fraction/exponent: not a plain u64.
        if digits == 0 || (digits > 1 && b[start] == b'0') || !self.delimited() {
            return None;
        }
        Some(Some(n))
    }

    /// An object, calling `field` with each key; `field` must consume the value.
    pub(crate) fn object(
        &mut self,
        mut field: impl FnMut(&mut Self, RawStr<'a>) -> Option<()>,
    ) -> Option<()> {
        self.object_at(&[], |c, _, key| field(c, key))
    }

    /// [`Cursor::object`], `field` also given where each member starts (just after
    /// the `{` or `,` before it, or at its key after whitespace that followed the `{`).
    /// A cursor [`at`](Cursor::at) that position of equal bytes reads the rest with
    /// [`Cursor::members_expecting`] as this walk does: what a walk reads depends only on the
    /// bytes it has passed (a value is followed by its delimiter, and a word read past
    /// a string's closing quote changes nothing, see [`stop_at`]).
    /// The keys are expected in the order of `keys` (see [`Cursor::object_expecting`]).
    pub(crate) fn object_at(
        &mut self,
        keys: &[Key],
        field: impl FnMut(&mut Self, usize, RawStr<'a>) -> Option<()>,
    ) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.pos += 1;
            return Some(());
        }
        self.members_expecting(keys, field)
    }

    /// [`Cursor::object`], the keys expected in the order of `keys` (a provider writes
    /// its fields in one order): each key is first compared with the one expected next
    /// (after the last one found), and read as [`Cursor::object`] reads it when it is
    /// not that one. The walk reads what `object` reads.
    pub(crate) fn object_expecting(
        &mut self,
        keys: &[Key],
        mut field: impl FnMut(&mut Self, RawStr<'a>) -> Option<()>,
    ) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.pos += 1;
            return Some(());
        }
        self.members_expecting(keys, |c, _, key| field(c, key))
    }

    /// The members of an object from the start of one (see [`Cursor::object_at`])
    /// through its closing brace, the keys expected in the order of `keys` (see
    /// [`Cursor::object_expecting`]).
    pub(crate) fn members_expecting(
        &mut self,
        keys: &[Key],
        mut field: impl FnMut(&mut Self, usize, RawStr<'a>) -> Option<()>,
    ) -> Option<()> {
        let mut next = 0;
        loop {
            let at = self.pos;
            let key = match keys.get(next) {
                Some(k) if k.is_at(self.bytes(), at) => {
                    next += 1;
                    self.pos = at + k.len;
                    RawStr {
                        raw: k.name,
                        escaped: false,
                    }
                }
                // One key left out of the order: the one after it is tried too.
                Some(_)
                    if keys
                        .get(next + 1)
                        .is_some_and(|k| k.is_at(self.bytes(), at)) =>
                {
                    let k = &keys[next + 1];
                    next += 2;
                    self.pos = at + k.len;
                    RawStr {
                        raw: k.name,
                        escaped: false,
                    }
                }
                _ => self.key()?,
            };
            field(self, at, key)?;
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// An array, calling `item` for each element; `item` must consume it.
    pub(crate) fn array(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        if self.peek()? == b']' {
            self.pos += 1;
            return Some(());
        }
        loop {
            item(self)?;
            match self.peek()? {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Any JSON value, checked and skipped.
    pub(crate) fn skip(&mut self) -> Option<()> {
        self.skip_at(0)
    }

    fn skip_at(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => self.object(|c, _| c.skip_at(depth + 1)),
            b'[' => self.array(|c| c.skip_at(depth + 1)),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.null().then_some(()),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if !self.bytes()[self.pos..].starts_with(word) {
            return None;
        }
        self.pos += word.len();
        self.delimited().then_some(())
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Option<()> {
        let b = self.bytes();
        let digits = |pos: &mut usize| {
            let start = *pos;
            while b.get(*pos).is_some_and(u8::is_ascii_digit) {
                *pos += 1;
            }
            *pos - start
        };
        let mut p = self.pos;
        if b.get(p) == Some(&b'-') {
            p += 1;
        }
        let first = p;
        match digits(&mut p) {
            0 => return None,
            n if n > 1 && b[first] == b'0' => return None,
            _ => {}
        }
        if b.get(p) == Some(&b'.') {
            p += 1;
            if digits(&mut p) == 0 {
                return None;
            }
        }
        if matches!(b.get(p), Some(b'e' | b'E')) {
            p += 1;
            if matches!(b.get(p), Some(b'+' | b'-')) {
                p += 1;
            }
            if digits(&mut p) == 0 {
                return None;
            }
        }
        self.pos = p;
        self.delimited().then_some(())
    }
}

/// A chunk already decoded, kept to recognise the next ones: streamed chunks repeat
/// their id, model, index and nulls byte for byte and differ only in a few strings
/// (the text, OpenAI's random `obfuscation` padding). A new chunk that equals the
/// template outside those strings, and holds a valid JSON string in each of them, reads
/// exactly as the template did with those strings put in: the cursor's walk of the
/// equal bytes takes the same path, and a string's bytes decide nothing but its own
/// validity. So its meaning comes from comparing bytes, not from walking them.
#[derive(Debug, Default)]
pub(crate) struct Template {
    /// The decoded chunk, as written.
    src: String,
    /// Its variable strings (quotes included), in order and apart.
    holes: Vec<std::ops::Range<usize>>,
    /// Which hole holds the text the chunk carries.
    text: usize,
    /// `src` has no CR or LF (it came from one SSE `data:` line, as nearly always):
    /// then it can be matched on a stream's bytes before their lines are found
    /// ([`Template::append_text_line`]).
    one_line: bool,
}

impl Template {
    /// Keep `src` (reusing this template's buffers) with its `holes`, `text` being
    /// the text's hole. Nothing is kept when the holes are not valid JSON strings of
    /// `src` (quotes included) in order (then [`Template::text_of`] matches nothing).
    pub(crate) fn set(&mut self, src: &str, holes: &[std::ops::Range<usize>], text: usize) {
        self.src.clear();
        self.holes.clear();
        self.one_line = false;
        let mut after = 0;
        for h in holes {
            let mut c = Cursor { src, pos: h.start };
            let string = h.start >= after
                && src.as_bytes().get(h.start) == Some(&b'"')
                && c.string().is_some()
                && c.pos == h.end;
            if !string {
                return;
            }
            after = h.end;
        }
        if text >= holes.len() {
            return;
        }
        self.keep(src, holes, text);
    }

    /// Keep `src` with its `holes` (found valid), `text` being the text's hole.
    fn keep(&mut self, src: &str, holes: &[std::ops::Range<usize>], text: usize) {
        self.src.push_str(src);
        self.holes.extend_from_slice(holes);
        self.text = text;
        self.one_line = memchr::memchr2(b'\n', b'\r', src.as_bytes()).is_none();
    }

    /// [`Template::set`] with holes that a [`Cursor`] walk of `src` read as strings
    /// ([`Cursor::spanned_string`]), in the walk's order: valid by construction, so not
    /// scanned again here (debug builds check that `set` would keep them all).
    pub(crate) fn set_walked(&mut self, src: &str, holes: &[std::ops::Range<usize>], text: usize) {
        debug_assert!(
            text >= holes.len() || {
                let mut checked = Template::default();
                checked.set(src, holes, text);
                checked.holes.len() == holes.len()
            }
        );
        self.src.clear();
        self.holes.clear();
        self.one_line = false;
        if text >= holes.len() {
            return;
        }
        self.keep(src, holes, text);
    }

    /// The text of `data` when it is this template with other strings in its holes:
    /// every byte outside the holes equal, each hole a valid JSON string (escapes
    /// checked as [`Cursor::string`] checks them). `None` otherwise.
    ///
    /// A hole before the text's that holds the template's own string (OpenAI's
    /// `service_tier` and `system_fingerprint` do, chunk after chunk) is compared with
    /// the bytes before it, not scanned: the template's string is a valid JSON string
    /// (see [`Template::set`]), so equal bytes through its closing quote are that same
    /// string, and the scan would end where the comparison does.
    pub(crate) fn text_of<'a>(&self, data: &'a str) -> Option<RawStr<'a>> {
        let text = self.text_hole(data.as_bytes())?;
        let raw = std::str::from_utf8(text.raw).ok()?;
        Some(RawStr {
            raw,
            escaped: text.escaped,
        })
    }

    /// The one event of an SSE event's data that is a text chunk like the template's:
    /// [`Template::text_hole`] on the bytes, before (and instead of) checking them all
    /// as UTF-8; only ASCII whitespace is trimmed (the template starts and ends with a
    /// brace, so a match had only that around it).
    pub(crate) fn text_chunk(&self, data: &[u8]) -> Option<crate::chat::ChunkEvents> {
        self.text_hole(data.trim_ascii())
            .and_then(TextHole::into_string)
            .map(crate::chat::ChunkEvents::text)
    }

    /// [`Template::text_chunk`] for an answer being assembled: the text (its one text
    /// delta, or none when it is empty) appended to `out`, the assembled answer's text,
    /// instead of coming as an event of its own. `false` (and `out` untouched) exactly
    /// where `text_chunk` is `None`.
    pub(crate) fn append_text(&self, data: &[u8], out: &mut String) -> bool {
        self.text_hole(data.trim_ascii())
            .and_then(TextHole::text)
            .map(|text| out.push_str(&text))
            .is_some()
    }

    /// [`Template::append_text`] of an SSE `data:` line's value before its end is known:
    /// `line` is the bytes from the value's start on (to the end of what has been read).
    /// When they start with a text chunk like the template's whose text is valid (UTF-8,
    /// escapes that decode), its length, and where its text is ([`TextRun::push`]
    /// appends it as `append_text` would). The bytes matched are the template's (with
    /// no CR or LF) or JSON strings (which hold none either), so the line ends there or
    /// later, and it is that chunk when its line ends there (the reader's to check),
    /// with nothing around it that `append_text` would trim. `None` otherwise.
    pub(crate) fn text_line(&self, line: &[u8]) -> Option<(usize, LineText)> {
        if !self.one_line {
            return None;
        }
        let (hole, len) = self.match_holes::<false>(line)?;
        let hole = hole?;
        let valid = if hole.escaped {
            hole.text().is_some()
        } else {
            hole.raw.is_ascii() || std::str::from_utf8(hole.raw).is_ok()
        };
        valid.then_some((
            len,
            LineText {
                start: hole.at,
                end: hole.at + hole.raw.len(),
                escaped: hole.escaped,
            },
        ))
    }

    /// A decoder's template step: with `out` (an answer being assembled, its text so
    /// far) [`Template::append_text`], whose match gives no events; without it
    /// [`Template::text_chunk`]. `None`: not a text chunk like the template's.
    pub(crate) fn take_chunk(
        &self,
        data: &[u8],
        out: Option<&mut String>,
    ) -> Option<crate::chat::ChunkEvents> {
        match out {
            Some(out) => self
                .append_text(data, out)
                .then(crate::chat::ChunkEvents::default),
            None => self.text_chunk(data),
        }
    }

    /// [`Template::text_of`] of bytes not yet known to be UTF-8, the text left as
    /// bytes too ([`TextHole::into_string`] checks it). The other holes scanned are
    /// checked as UTF-8 here; the rest equals the template, which is text, and every
    /// hole is bounded by ASCII quotes, so `b` is valid UTF-8 as a whole when the
    /// text is, and reads as `text_of` reads it.
    pub(crate) fn text_hole<'a>(&self, b: &'a [u8]) -> Option<TextHole<'a>> {
        self.match_holes::<true>(b).and_then(|(text, _)| text)
    }

    /// [`Template::text_hole`]'s match: `WHOLE`, of all of `b`; otherwise of its start
    /// (the matched length returned beside the text).
    #[inline(always)]
    fn match_holes<'a, const WHOLE: bool>(
        &self,
        b: &'a [u8],
    ) -> Option<(Option<TextHole<'a>>, usize)> {
        let start = self.holes.get(self.text)?.start;
        let src = self.src.as_bytes();
        // Nearly always every byte before the text is the template's (the holes there
        // hold the template's own strings): then the loop below would compare them
        // all through; compared here at once, it starts at the text.
        let (mut from, mut at, first) = match src.get(..start) {
            Some(head) if b.get(..start) == Some(head) => (start, start, self.text),
            _ => (0, 0, 0),
        };
        let mut text = None;
        for (i, hole) in self.holes.iter().enumerate().skip(first) {
            // After the text, the strings are rarely the template's (OpenAI's random
            // `obfuscation`): scanned without trying the comparison first.
            if i < self.text {
                let through = &src[from..hole.end];
                if b.get(at..at + through.len()) == Some(through) {
                    at += through.len();
                    from = hole.end;
                    continue;
                }
            }
            let same = &src[from..hole.start];
            let open = at + same.len();
            if b.get(at..open)? != same || b.get(open) != Some(&b'"') {
                return None;
            }
            let (close, escaped) = short_string_end(b, open + 1)?;
            let raw = &b[open + 1..close];
            if i == self.text {
                text = Some(TextHole {
                    raw,
                    escaped,
                    at: open + 1,
                });
            } else if !raw.is_ascii() {
                std::str::from_utf8(raw).ok()?;
            }
            at = close + 1;
            from = hole.end;
        }
        let tail = &src[from..];
        let end = at + tail.len();
        if WHOLE {
            (b.get(at..)? == tail).then_some(())?;
        } else {
            (b.get(at..end)? == tail).then_some(())?;
        }
        Some((text, end))
    }
}

/// A template's text hole in a matching chunk: a valid JSON string (between the
/// quotes, escapes not decoded) whose bytes are not yet checked as UTF-8.
#[derive(Clone, Copy)]
pub(crate) struct TextHole<'a> {
    raw: &'a [u8],
    escaped: bool,
    /// Where `raw` starts in the bytes matched.
    at: usize,
}

impl<'a> TextHole<'a> {
    /// The string's value, as [`RawStr::text`] reads it: `None` when it is not UTF-8
    /// or its escapes do not decode.
    pub(crate) fn into_string(self) -> Option<String> {
        self.text().map(Cow::into_owned)
    }

    /// [`TextHole::into_string`], borrowed when the string has no escapes.
    fn text(self) -> Option<Cow<'a, str>> {
        let raw = std::str::from_utf8(self.raw).ok()?;
        RawStr {
            raw,
            escaped: self.escaped,
        }
        .text()
    }
}

/// Where [`Template::text_line`] found a valid text in a line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LineText {
    start: usize,
    end: usize,
    escaped: bool,
}

/// Texts found by [`Template::text_line`], appended to an answer's text in order. Texts
/// without escapes are gathered as bytes and made a `str` once, when the run is
/// flushed ([`TextRun::finish`], or when room runs out): each was found valid UTF-8 on
/// its own, and valid strings put together are valid, so that saves a check a chunk.
pub(crate) struct TextRun<'a> {
    out: &'a mut String,
    bytes: [u8; 256],
    len: usize,
}

impl<'a> TextRun<'a> {
    pub(crate) fn new(out: &'a mut String) -> Self {
        TextRun {
            out,
            bytes: [0; 256],
            len: 0,
        }
    }

    /// Append the text `at` of `line` (as `text_line` found it there).
    pub(crate) fn push(&mut self, line: &[u8], at: LineText) {
        let Some(raw) = line.get(at.start..at.end) else {
            return;
        };
        if !at.escaped
            && let Some(room) = self.bytes.get_mut(self.len..self.len + raw.len())
        {
            room.copy_from_slice(raw);
            self.len += raw.len();
            return;
        }
        self.flush();
        let text = TextHole {
            raw,
            escaped: at.escaped,
            at: at.start,
        }
        .text();
        debug_assert!(text.is_some(), "text_line found it valid");
        if let Some(text) = text {
            self.out.push_str(&text);
        }
    }

    fn flush(&mut self) {
        if self.len > 0 {
            let text = std::str::from_utf8(&self.bytes[..self.len]);
            debug_assert!(text.is_ok(), "valid texts put together");
            if let Ok(text) = text {
                self.out.push_str(text);
            }
            self.len = 0;
        }
    }

    /// Append what is gathered.
    pub(crate) fn finish(mut self) {
        self.flush();
    }
}

/// Marks each known key of one object as seen; a second sighting fails (serde's
/// derived structs reject duplicate fields, so such a chunk goes to the general path).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Seen(u32);

impl Seen {
    pub(crate) fn first(&mut self, bit: u32) -> Option<()> {
        let mask = 1 << bit;
        if self.0 & mask != 0 {
            return None;
        }
        self.0 |= mask;
        Some(())
    }
}

/// Test support: the bytes [`edit_bytes`] puts into chunks in the decoders' template
/// proptests: invalid UTF-8 (a lone continuation byte, a cut sequence, 0xFF, a lone
/// lead byte), whitespace that `str::trim` removes and `trim_ascii` does not (VT, NBSP,
/// U+3000), multi-byte characters and JSON specials.
#[cfg(test)]
pub(crate) const BYTE_EDITS: [&[u8]; 14] = [
    b"\x80",
    b"\xe2\x82",
    b"\xff",
    b"\xc3",
    b"\x0b",
    "\u{a0}".as_bytes(),
    "\u{3000}".as_bytes(),
    "\u{e9}".as_bytes(),
    "\u{1F600}".as_bytes(),
    b" ",
    b"\"",
    b"\\",
    b"\n",
    b"\x01",
];

/// Test support for the decoders' differential proptests: `edits` applied to `data` in
/// turn (at a position: 0 removes a byte, 1 inserts `table[with]`, else replaces the byte
/// with it), then, when `around.2`, `table[around.0]` put before and `table[around.1]`
/// after.
#[cfg(test)]
pub(crate) fn edit_bytes(
    data: &mut Vec<u8>,
    table: &[&[u8]],
    edits: &[(proptest::sample::Index, u8, usize)],
    around: (usize, usize, bool),
) {
    for &(at, edit, with) in edits {
        let at = at.index(data.len());
        match edit {
            0 => {
                data.remove(at);
            }
            1 => {
                data.splice(at..at, table[with].iter().copied());
            }
            _ => {
                data.splice(at..=at, table[with].iter().copied());
            }
        }
    }
    if around.2 {
        data.splice(0..0, table[around.0].iter().copied());
        data.extend_from_slice(table[around.1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run of texts appended in order, whatever their mix: plain ones gathered past
    /// the run's room, escaped ones, multi-byte ones, one longer than the room.
    #[test]
    fn a_text_run_appends_its_texts_in_order() {
        let pieces: Vec<(String, bool)> = (0..160)
            .map(|i| match i % 7 {
                0 => (r#"a\"b\n"#.to_string(), true),
                1 => ("caf\u{e9} \u{1F600}".to_string(), false),
                2 if i == 30 => ("x".repeat(300), false),
                _ => (format!("w{i} "), false),
            })
            .collect();
        let mut line = Vec::new();
        let mut ats = Vec::new();
        for (raw, escaped) in &pieces {
            line.extend_from_slice(b"\"");
            ats.push(LineText {
                start: line.len(),
                end: line.len() + raw.len(),
                escaped: *escaped,
            });
            line.extend_from_slice(raw.as_bytes());
            line.extend_from_slice(b"\",");
        }
        let mut out = String::from("so far: ");
        let mut run = TextRun::new(&mut out);
        for at in ats {
            run.push(&line, at);
        }
        run.finish();
        let want: String = pieces
            .iter()
            .map(|(raw, escaped)| match escaped {
                true => serde_json::from_str::<String>(&format!("\"{raw}\"")).unwrap(),
                false => raw.clone(),
            })
            .collect();
        assert!(want.len() > 1000);
        assert_eq!(out, format!("so far: {want}"));
    }

    fn skips(s: &str) -> bool {
        let mut c = Cursor::new(s);
        c.skip().and_then(|()| c.end()).is_some()
    }

    #[test]
    fn a_block_has_a_stop_exactly_when_one_of_its_bytes_is_one() {
        let fills = [
            b' ', b'!', b'#', b'[', b']', b'a', 0x7f, 0x80, 0xa2, 0xdc, 0xff,
        ];
        for &fill in &fills {
            assert!(!block_has_stop(&[fill; BLOCK]));
            for at in 0..BLOCK {
                for c in 0..=u8::MAX {
                    let mut block = [fill; BLOCK];
                    block[at] = c;
                    assert_eq!(
                        block_has_stop(&block),
                        STOPS[usize::from(c)],
                        "fill {fill:#x}, {c:#x} at {at}"
                    );
                }
            }
        }
    }

    proptest::proptest! {
        /// Long runs (past the two words after which blocks are skipped) stop where a
        /// byte walk does, with stops anywhere (in a block, at its edges, in the tail).
        #[test]
        fn long_runs_stop_where_a_byte_walk_does(
            fill in proptest::sample::select(vec![b' ', b'#', b']', b'a', 0x7f, 0x80, 0xdc, 0xff]),
            len in 0usize..200,
            stops in proptest::collection::vec((0usize..200, proptest::sample::select(vec![b'"', b'\\', 0x00, 0x0a, 0x1f])), 0..3),
            from in 0usize..20,
        ) {
            let mut b = vec![fill; len];
            for (at, c) in stops {
                if at < len {
                    b[at] = c;
                }
            }
            let from = from.min(len);
            let want = b[from..].iter().position(|&c| STOPS[usize::from(c)]).map(|n| n + from);
            proptest::prop_assert_eq!(stop_at(&b, from), want);
        }
    }

    #[test]
    fn word_at_a_time_stops_where_a_byte_walk_does() {
        // Every stop byte at every offset of two words, among fill bytes at the edges
        // of the tested ranges (just above the controls, around the quote and the
        // backslash, and non-ASCII bytes whose low bits look like a stop).
        let stops = [b'"', b'\\', 0x00, 0x01, 0x1f];
        let fills = [
            b' ', b'!', b'#', b'[', b']', 0x7f, 0x80, 0xa2, 0xdc, 0x9f, 0xff,
        ];
        for &fill in &fills {
            for len in 0..20 {
                for at in 0..=len {
                    for &stop in &stops {
                        let mut b = vec![fill; len];
                        if at < len {
                            b[at] = stop;
                        }
                        let naive = b.iter().position(|&c| STOPS[usize::from(c)]);
                        for from in 0..=len.min(3) {
                            let want = naive.filter(|&n| n >= from).or_else(|| {
                                b[from..]
                                    .iter()
                                    .position(|&c| STOPS[usize::from(c)])
                                    .map(|n| n + from)
                            });
                            assert_eq!(
                                stop_at(&b, from),
                                want,
                                "fill {fill:#x} stop {stop:#x} at {at} of {len} from {from}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_template_matches_other_strings_in_its_holes_only() {
        let src = r#"{"a":"x","t":"hello","n":null,"o":"pad"}"#;
        let at = |s: &str| src.find(s).map(|i| i..i + s.len()).expect("in src");
        let mut t = Template::default();
        t.set(src, &[at(r#""x""#), at(r#""hello""#), at(r#""pad""#)], 1);
        let text = |d: &str| t.text_of(d).and_then(RawStr::text).map(|c| c.into_owned());
        assert_eq!(text(src).as_deref(), Some("hello"));
        for (data, want) in [
            (r#"{"a":"yy","t":"","n":null,"o":"p"}"#, Some("")),
            (
                r#"{"a":"x","t":"caf\u00e9 \"q\"\n","n":null,"o":"pad"}"#,
                Some("café \"q\"\n"),
            ),
            (
                r#"{"a":"x","t":"\u00e9","n":null,"o":"longer pad"}"#,
                Some("é"),
            ),
            // A byte outside the holes differs.
            (r#"{"a":"x","t":"hi","n":nul,"o":"pad"}"#, None),
            (r#"{"a":"x","t":"hi","n":null,"o":"pad"} "#, None),
            (r#"{"a":"x","t":"hi","n":null,"o":"pad"}}"#, None),
            (r#"{"a":"x","t":"hi","n":null,"o":"pad""#, None),
            (r#"{"a":"x","t":"hi","N":null,"o":"pad"}"#, None),
            // A hole that is not a valid string, or not a string.
            (
                "{\"a\":\"x\",\"t\":\"h\u{1}i\",\"n\":null,\"o\":\"pad\"}",
                None,
            ),
            (r#"{"a":"x","t":"h\qi","n":null,"o":"pad"}"#, None),
            (r#"{"a":"x","t":"h\u12","n":null,"o":"pad"}"#, None),
            (r#"{"a":"x","t":"hi,"n":null,"o":"pad"}"#, None),
            (r#"{"a":"x","t":5,"n":null,"o":"pad"}"#, None),
            (r#"{"a":"x","t": "hi","n":null,"o":"pad"}"#, None),
            (r#"{"a":"x","t":"hi","n":null,"o":"pad"#, None),
            ("", None),
        ] {
            assert_eq!(text(data).as_deref(), want, "{data}");
        }
        // Holes that are not quoted strings of the source keep nothing.
        let mut t = Template::default();
        t.set(src, &[at("hello")], 0);
        assert!(t.text_of(src).is_none());
        t.set(src, &[at(r#""hello""#), at(r#""x""#)], 0);
        assert!(t.text_of(src).is_none());
        t.set(src, &[at(r#""hello""#)], 1);
        assert!(t.text_of(src).is_none());
    }

    /// [`Template::text_of`] as it was before holes holding the template's own string
    /// were compared instead of scanned: every hole scanned.
    fn text_of_by_scanning<'a>(t: &Template, data: &'a str) -> Option<RawStr<'a>> {
        if t.holes.is_empty() {
            return None;
        }
        let (src, b) = (t.src.as_bytes(), data.as_bytes());
        let (mut from, mut at) = (0, 0);
        let mut text = None;
        for (i, hole) in t.holes.iter().enumerate() {
            let same = &src[from..hole.start];
            if b.get(at..at + same.len())? != same || b.get(at + same.len()) != Some(&b'"') {
                return None;
            }
            let mut c = Cursor {
                src: data,
                pos: at + same.len(),
            };
            let s = c.string()?;
            if i == t.text {
                text = Some(s);
            }
            at = c.pos;
            from = hole.end;
        }
        (b.get(at..)? == &src[from..]).then_some(())?;
        text
    }

    /// Strings for the template test: valid ones (plain, escaped, empty, one the prefix
    /// of another) and broken ones (which a template never keeps).
    const STRINGS: &[&str] = &[
        r#""default""#,
        r#""defaults""#,
        r#""""#,
        r#""fp_1a2b""#,
        r#""a\"b""#,
        r#""a\\""#,
        r#""caf\u00e9""#,
        "\"h\u{e9}llo \u{1F600}\"",
        r#""a"b""#,
        r#""a\q""#,
        r#""a"#,
        r#"5"#,
        "\"tab\there\"",
    ];

    proptest::proptest! {
        #[test]
        fn comparing_unchanged_holes_reads_as_scanning_them(
            holes in proptest::collection::vec(0..STRINGS.len(), 1..5),
            text in proptest::prelude::any::<proptest::sample::Index>(),
            changes in proptest::collection::vec(proptest::option::of(0..STRINGS.len()), 1..5),
            cut in proptest::option::of(0usize..200),
        ) {
            // A template `{"k0":<s>,"k1":<s>,…}` and data with some holes' strings
            // replaced (by equal, longer, escaped or broken ones), maybe cut short.
            let build = |strings: &[&str]| {
                let mut src = String::from("{");
                let mut spans = Vec::new();
                for (i, s) in strings.iter().enumerate() {
                    if i > 0 {
                        src.push(',');
                    }
                    src.push_str(&format!("\"k{i}\":"));
                    spans.push(src.len()..src.len() + s.len());
                    src.push_str(s);
                }
                src.push('}');
                (src, spans)
            };
            let mine: Vec<&str> = holes.iter().map(|&h| STRINGS[h]).collect();
            let (src, spans) = build(&mine);
            let mut t = Template::default();
            t.set(&src, &spans, text.index(spans.len()));
            let theirs: Vec<&str> = mine
                .iter()
                .enumerate()
                .map(|(i, s)| changes.get(i).copied().flatten().map_or(*s, |c| STRINGS[c]))
                .collect();
            let (mut data, _) = build(&theirs);
            if let Some(cut) = cut.filter(|&c| c < data.len() && data.is_char_boundary(c)) {
                data.truncate(cut);
            }
            let got = t.text_of(&data).map(|s| (s.raw, s.escaped));
            let want = text_of_by_scanning(&t, &data).map(|s| (s.raw, s.escaped));
            proptest::prop_assert_eq!(got, want, "{} / {}", src, data);
        }
    }

    #[test]
    fn accepts_exactly_what_serde_accepts_on_a_sample() {
        let cases = [
            r#"{}"#,
            r#"[]"#,
            r#"{"a":[1,2.5,-3e7,0,0.1,1E+2,true,false,null,"x\n\"\u00e9"]}"#,
            r#" { "a" : { "b" : [ ] } } "#,
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"[1 2]"#,
            r#"01"#,
            r#"1."#,
            r#"-"#,
            r#"1e"#,
            r#"nul"#,
            r#"nullx"#,
            r#"truex"#,
            r#""\x""#,
            r#""\u12g4""#,
            "\"tab\there\"",
            r#"{"a":1}x"#,
            r#"{"a":1"#,
            r#""unterminated"#,
            r#"[1,]"#,
            r#"{,}"#,
            r#"{"a":-01}"#,
            r#"{"a":.5}"#,
        ];
        for s in cases {
            let serde_ok = serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok();
            assert_eq!(skips(s), serde_ok, "{s}");
        }
    }

    #[test]
    fn deep_nesting_is_left_to_serde() {
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(!skips(&deep));
        let shallow = format!("{}{}", "[".repeat(10), "]".repeat(10));
        assert!(skips(&shallow));
    }

    #[test]
    fn strings_borrow_unless_escaped() {
        let mut c = Cursor::new(r#""plain""#);
        assert!(matches!(
            c.string().and_then(RawStr::text),
            Some(Cow::Borrowed("plain"))
        ));
        let mut c = Cursor::new(r#""a\nb\ud83d\ude00""#);
        assert_eq!(c.string().and_then(RawStr::text).as_deref(), Some("a\nb😀"));
        // A lone surrogate is not text.
        let mut c = Cursor::new(r#""\ud800""#);
        assert_eq!(c.string().and_then(RawStr::text), None);
    }

    #[test]
    fn u64_fields_take_plain_integers_only() {
        for (s, want) in [
            ("0", Some(Some(0))),
            ("42", Some(Some(42))),
            ("null", Some(None)),
            ("18446744073709551615", Some(Some(u64::MAX))),
            ("18446744073709551616", None),
            ("-1", None),
            ("1.0", None),
            ("1e2", None),
            ("07", None),
            ("\"1\"", None),
        ] {
            let mut c = Cursor::new(s);
            assert_eq!(c.opt_u64(), want, "{s}");
        }
    }

    proptest::proptest! {
        #[test]
        fn long_strings_scan_like_serde(s in "[ -~\\u{e9}\\u{1F600}\t]{0,80}") {
            // Random text (quotes, backslashes and tabs included) written as a JSON string
            // and as a raw, possibly invalid one.
            let quoted = serde_json::to_string(&s).unwrap();
            let mut c = Cursor::new(&quoted);
            let got = c.string().and_then(RawStr::text);
            proptest::prop_assert_eq!(got.as_deref(), Some(s.as_str()));
            let raw = format!("\"{s}\"");
            let serde_ok = serde_json::from_str::<String>(&raw).is_ok();
            let mut c = Cursor::new(&raw);
            let ours = c.string().and_then(RawStr::text).is_some() && c.end().is_some();
            proptest::prop_assert_eq!(ours, serde_ok, "{}", raw);
        }
    }

    /// An object's keys as [`Cursor::object`] reads them before its inline key path:
    /// each through [`Cursor::string`], then the colon.
    fn keys_by_string(s: &str) -> Option<Vec<(&str, bool)>> {
        let mut c = Cursor::new(s);
        let mut out = Vec::new();
        c.eat(b'{')?;
        if c.peek()? == b'}' {
            c.pos += 1;
        } else {
            loop {
                let key = c.string()?;
                c.eat(b':')?;
                out.push((key.raw, key.escaped));
                c.skip()?;
                match c.peek()? {
                    b',' => c.pos += 1,
                    b'}' => {
                        c.pos += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        c.end()?;
        Some(out)
    }

    fn keys_by_object(s: &str) -> Option<Vec<(&str, bool)>> {
        keys_read(s, None)
    }

    /// The keys of the object `s` (raw, escaped) as `Cursor::object` reads them, or
    /// with `expecting`, as `Cursor::object_expecting` does.
    fn keys_read<'a>(s: &'a str, expecting: Option<&[Key]>) -> Option<Vec<(&'a str, bool)>> {
        let mut c = Cursor::new(s);
        let mut out = Vec::new();
        let field = |c: &mut Cursor<'a>, key: RawStr<'a>| {
            out.push((key.raw, key.escaped));
            c.skip()
        };
        match expecting {
            None => c.object(field)?,
            Some(keys) => c.object_expecting(keys, field)?,
        }
        c.end()?;
        Some(out)
    }

    /// Keys for the key test: short, a word long and longer (the inline path reads
    /// three words), prefixes of one another, escaped (`\u0069d` is `id`), with
    /// multi-byte UTF-8, and broken ones.
    const KEYS: &[&str] = &[
        r#""id""#,
        r#""i""#,
        r#""idx""#,
        r#""""#,
        r#""exactly8""#,
        r#""seven_7""#,
        r#""sixteen_bytes_ab""#,
        r#""system_fingerprint""#,
        r#""twenty_three_bytes_abcd""#,
        r#""twenty_four_bytes_abcdef""#,
        r#""accepted_prediction_tokens""#,
        r#""\u0069d""#,
        r#""i\"d""#,
        r#""a\\""#,
        r#""long_key_with_escape_late\n""#,
        r#""\ud83d\ude00""#,
        "\"caf\u{e9}\u{1F600}\"",
        "\"tab\tkey\"",
        r#""a\q""#,
        r#""a"b""#,
        r#""unterminated"#,
        r#"5"#,
    ];
    const GAPS: &[&str] = &["", " ", "\n", "\r\n\t "];

    proptest::proptest! {
        #[test]
        fn object_keys_read_as_strings_do(
            members in proptest::collection::vec(
                (0..KEYS.len(), 0..GAPS.len(), 0..GAPS.len(), 0..GAPS.len()),
                0..5,
            ),
            cut in proptest::option::of(0usize..120),
        ) {
            let mut s = String::from("{");
            for (i, &(k, g1, g2, g3)) in members.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(GAPS[g1]);
                s.push_str(KEYS[k]);
                s.push_str(GAPS[g2]);
                s.push(':');
                s.push_str(GAPS[g3]);
                s.push_str("[1,\"v\"]");
            }
            s.push('}');
            if let Some(cut) = cut.filter(|&c| c < s.len() && s.is_char_boundary(c)) {
                s.truncate(cut);
            }
            let got = keys_by_object(&s);
            proptest::prop_assert_eq!(&got, &keys_by_string(&s), "{}", s);
            let serde_ok = serde_json::from_str::<serde::de::IgnoredAny>(&s).is_ok();
            proptest::prop_assert_eq!(got.is_some(), serde_ok, "{}", s);
        }
    }

    fn keys_by_object_expecting<'a>(s: &'a str, keys: &[Key]) -> Option<Vec<(&'a str, bool)>> {
        keys_read(s, Some(keys))
    }

    /// Expected keys for the key test: some of [`KEYS`] (one, two, three and four words
    /// with the quotes and colon), prefixes of them and others.
    const EXPECTED: &[&str] = &[
        "id",
        "i",
        "idx",
        "exactly8",
        "seven_7",
        "sixteen_bytes_ab",
        "system_fingerprint",
        "twenty_three_bytes_abcd",
        "twenty_four_bytes_abcdef",
        "x",
        "",
    ];

    proptest::proptest! {
        #[test]
        fn expected_keys_read_as_any_key(
            members in proptest::collection::vec(
                (0..KEYS.len(), 0..GAPS.len(), 0..GAPS.len(), 0..GAPS.len()),
                0..6,
            ),
            expected in proptest::collection::vec(0..EXPECTED.len(), 0..6),
            cut in proptest::option::of(0usize..160),
        ) {
            // Mostly no whitespace, so that the keys are the expected ones' bytes.
            let mut s = String::from("{");
            for (i, &(k, g1, g2, g3)) in members.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                let gap = |g: usize| if g.is_multiple_of(2) { "" } else { GAPS[g] };
                s.push_str(gap(g1));
                s.push_str(KEYS[k]);
                s.push_str(gap(g2));
                s.push(':');
                s.push_str(gap(g3));
                s.push_str("[1,\"v\"]");
            }
            s.push('}');
            if let Some(cut) = cut.filter(|&c| c < s.len() && s.is_char_boundary(c)) {
                s.truncate(cut);
            }
            let keys: Vec<Key> = expected.iter().map(|&k| Key::new(EXPECTED[k])).collect();
            proptest::prop_assert_eq!(
                keys_by_object_expecting(&s, &keys),
                keys_by_object(&s),
                "{}",
                s
            );
        }
    }

    #[test]
    fn expected_keys_are_compared_in_words() {
        let keys = [
            Key::new("id"),
            Key::new("model"),
            Key::new("system_fingerprint"),
        ];
        for (s, want) in [
            (
                r#"{"id":1,"model":2,"system_fingerprint":3}"#,
                Some(vec!["id", "model", "system_fingerprint"]),
            ),
            // Out of order, left out, longer, shorter, escaped: read as any key.
            (r#"{"model":2,"id":1}"#, Some(vec!["model", "id"])),
            (
                r#"{"system_fingerprint":3}"#,
                Some(vec!["system_fingerprint"]),
            ),
            (r#"{"ids":1,"mode":2}"#, Some(vec!["ids", "mode"])),
            (r#"{"i\u0064":1}"#, Some(vec![])),
            // Too few bytes left for a whole word: read as any key.
            (r#"{"id":1}"#, Some(vec!["id"])),
            (r#"{"id":}"#, None),
            (r#"{"id""#, None),
        ] {
            let got = keys_by_object_expecting(s, &keys);
            let got = got.map(|keys| {
                keys.into_iter()
                    .filter(|&(_, escaped)| !escaped)
                    .map(|(k, _)| k)
                    .collect::<Vec<_>>()
            });
            assert_eq!(got, want, "{s}");
            assert_eq!(keys_by_object_expecting(s, &keys), keys_by_object(s), "{s}");
        }
    }

    #[test]
    fn null_is_not_read_before_more_letters() {
        for s in ["nullx", "null{}", "null\"a\"", "nul"] {
            let mut c = Cursor::new(s);
            assert!(!c.null(), "{s}");
            assert_eq!(c.pos(), 0, "{s}");
        }
        let mut c = Cursor::new(" null,");
        assert!(c.null());
        assert_eq!(c.pos(), 5);
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let mut seen = Seen::default();
        assert!(seen.first(0).is_some());
        assert!(seen.first(3).is_some());
        assert!(seen.first(0).is_none());
    }
}
