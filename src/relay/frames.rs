//! Message boundaries in a relayed byte stream, from headers alone: after the startup phase
//! every protocol message is a type byte and a big-endian length that counts itself, so a
//! stream can be followed by skipping bodies. Nothing is parsed or copied: [`Frames::advance`]
//! looks at 5 header bytes per message and jumps over the rest, across chunk borders.

/// Where a stream stands relative to its message boundaries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Frames {
    /// Header bytes of the current message seen so far (0 = none; 5 = complete).
    header: u8,
    /// The length field as read so far.
    length: u32,
    /// Body bytes of the current message still to come.
    body_left: u32,
    /// The [`Watch`] asked for the first body byte of the current message.
    want_first: bool,
}

/// Type byte plus the 4-byte length.
const HEADER: u8 = 5;

/// What a [`Watch`] wants done with a message that starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Follow it.
    Skip,
    /// Follow it and show the watch its first body byte.
    First,
    /// Stop in front of it: it is not followed (nor anything after it).
    Stop,
}

/// Told about each message as it starts (the pooled relay's trackers); `()` watches nothing
/// and costs nothing.
pub trait Watch {
    /// A message with type byte `tag` starts.
    fn start(&mut self, tag: u8) -> Step;
    /// The first body byte of a message whose start answered [`Step::First`].
    fn first(&mut self, byte: u8);
}

impl Watch for () {
    #[inline(always)]
    fn start(&mut self, _: u8) -> Step {
        Step::Skip
    }
    #[inline(always)]
    fn first(&mut self, _: u8) {}
}

impl Frames {
    /// True between two messages: the bytes seen so far end exactly at a message end.
    pub fn at_boundary(&self) -> bool {
        self.header == 0 && self.body_left == 0
    }

    /// How many more bytes can pass before the current message could end: 0 at a boundary;
    /// inside a header, the rest of the header (the body length is not known yet).
    pub fn within_message(&self) -> usize {
        if self.body_left > 0 {
            self.body_left as usize
        } else if self.header > 0 {
            usize::from(HEADER - self.header)
        } else {
            0
        }
    }

    /// Follows `bytes`, the next bytes of the stream.
    #[inline]
    pub fn advance(&mut self, bytes: &[u8]) {
        self.follow(bytes, &mut ());
    }

    /// Follows `bytes`, telling `watch` about each message that starts. Returns how many
    /// bytes were followed: all, or fewer when `watch` stopped in front of a message (the
    /// stream then stands at that boundary).
    #[inline]
    pub fn follow<W: Watch>(&mut self, bytes: &[u8], watch: &mut W) -> usize {
        let mut rest = bytes;
        while let Some(&byte) = rest.first() {
            if self.body_left > 0 {
                if self.want_first {
                    self.want_first = false;
                    watch.first(byte);
                }
                let skip = rest.len().min(self.body_left as usize);
                self.body_left -= skip as u32;
                rest = &rest[skip..];
            } else if self.header > 0 {
                // A header split across chunks: byte by byte.
                self.length = self.length << 8 | u32::from(byte);
                self.header += 1;
                rest = &rest[1..];
                if self.header == HEADER {
                    self.body_left = body(self.length);
                    self.want_first &= self.body_left > 0;
                    self.header = 0;
                    self.length = 0;
                }
            } else {
                match watch.start(byte) {
                    Step::Stop => return bytes.len() - rest.len(),
                    Step::First => self.want_first = true,
                    Step::Skip => {}
                }
                rest = self.jump(rest, watch);
            }
        }
        bytes.len()
    }

    /// At a message start: over the whole message when its header is at hand (the common
    /// case), else past its type byte.
    #[inline(always)]
    fn jump<'a, W: Watch>(&mut self, rest: &'a [u8], watch: &mut W) -> &'a [u8] {
        if rest.len() < usize::from(HEADER) {
            self.header = 1;
            return &rest[1..];
        }
        let length = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]);
        let body = body(length);
        if self.want_first && body > 0 {
            if let Some(&first) = rest.get(usize::from(HEADER)) {
                self.want_first = false;
                watch.first(first);
            }
        } else {
            self.want_first = false;
        }
        let end = usize::from(HEADER).saturating_add(body as usize);
        match rest.get(end..) {
            Some(after) => after,
            None => {
                // end - len <= body, so it fits.
                self.body_left = (end - rest.len()) as u32;
                &[]
            }
        }
    }
}

/// The body size for a length field (which counts itself); a bogus length below 4 ends the
/// message at its header.
fn body(length: u32) -> u32 {
    length.saturating_sub(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message with `tag` and a body of `body` bytes.
    fn message(tag: u8, body: usize) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&((body + 4) as u32).to_be_bytes());
        m.extend(std::iter::repeat_n(0xAA, body));
        m
    }

    #[test]
    fn boundaries_are_found_at_every_split_of_the_stream() {
        let mut stream = message(b'T', 20);
        stream.extend(message(b'D', 0));
        stream.extend(message(b'D', 300));
        stream.extend(message(b'Z', 1));
        let ends = [25, 30, 335, 341];
        for split in 0..=stream.len() {
            let mut f = Frames::default();
            f.advance(&stream[..split]);
            assert_eq!(
                f.at_boundary(),
                split == 0 || ends.contains(&split),
                "{split}"
            );
            f.advance(&stream[split..]);
            assert!(f.at_boundary(), "whole stream, split at {split}");
        }
    }

    #[test]
    fn byte_by_byte_and_the_distance_to_the_end() {
        let stream = message(b'D', 10);
        let mut f = Frames::default();
        assert_eq!(f.within_message(), 0);
        f.advance(&stream[..2]);
        assert_eq!(f.within_message(), 3, "the rest of the header");
        for b in &stream[2..5] {
            f.advance(std::slice::from_ref(b));
        }
        assert_eq!(f.within_message(), 10, "the body");
        f.advance(&stream[5..14]);
        assert_eq!((f.within_message(), f.at_boundary()), (1, false));
        f.advance(&stream[14..]);
        assert!(f.at_boundary());
    }

    #[test]
    fn a_bogus_length_does_not_wedge_the_tracker() {
        let mut f = Frames::default();
        f.advance(&[b'X', 0, 0, 0, 1]);
        assert!(f.at_boundary());
    }
}
