//! hyper's own answers (400 for a malformed head, 414, 431) in the API's JSON error format: a writer around each connection that rewrites them on their way out.
//!
//! hyper answers a request head it cannot parse itself, with an empty body,
//! straight to the socket (`proto/h1/role.rs` `on_error`); no service sees
//! the request and there is no hook. So each connection's IO is wrapped in
//! [`Rewriting`], which follows the responses written on it (their heads,
//! and their bodies by `Content-Length` or chunks), and its service in
//! [`Answered`], which tells the writer, in order, each response the service
//! produced and whether it answers a HEAD (whose body hyper leaves out).
//! hyper writes a service's response only after the service produced it, and
//! its automatic answer only when every earlier response is written: a head
//! that no produced response is waiting for is hyper's own. When its status
//! is 400, 414 or 431 and it has no `Content-Type` it becomes the same status
//! with the JSON error body. Everything else passes through unchanged; a
//! stream the writer cannot follow is passed through untouched to its end.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use axum::http::{Method, Request};
use shared::wire::{ErrorBody, ErrorDetail};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The longest response head followed; a longer one is passed through.
const MAX_FOLLOWED_HEAD_BYTES: usize = 64 * 1024;

/// The responses a connection's service produced and hyper has not yet
/// written, in order: `true` for an answer to a HEAD.
#[derive(Clone, Default)]
pub struct Answers(Arc<Mutex<VecDeque<bool>>>);

impl Answers {
    fn push(&self, head: bool) {
        self.0.lock().expect("answers lock").push_back(head);
    }

    fn pop(&self) -> Option<bool> {
        self.0.lock().expect("answers lock").pop_front()
    }
}

/// A connection's service, telling [`Answers`] of each response it produced.
pub struct Answered<S> {
    inner: S,
    answers: Answers,
}

impl<S> Answered<S> {
    pub fn new(inner: S, answers: Answers) -> Answered<S> {
        Answered { inner, answers }
    }
}

impl<S, B> hyper::service::Service<Request<B>> for Answered<S>
where
    S: hyper::service::Service<Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn call(&self, request: Request<B>) -> Self::Future {
        let head = request.method() == Method::HEAD;
        let answers = self.answers.clone();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answer = answer.await;
            // An error is no response: hyper closes the connection instead.
            if answer.is_ok() {
                answers.push(head);
            }
            answer
        })
    }
}

/// Where the writer is in the stream of responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// At the start of a response: its head is held until it is whole.
    Head,
    /// In a body of known length: the bytes left (never 0).
    Length(u64),
    /// In a chunked body.
    Chunked(Chunk),
    /// Not followed (a body that runs to the close, a head that is not
    /// HTTP/1): everything passes through untouched.
    Opaque,
}

/// Where the writer is in a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// The size line: the size so far; `done` once past its hex digits.
    Size { size: u64, done: bool },
    /// A chunk's data: the bytes left.
    Data(u64),
    /// The line end after a chunk's data.
    DataEnd,
    /// The trailer lines after the last chunk: the length of this one so far.
    Trailer(usize),
}

impl Framing {
    /// Follows `bytes` of a body; how many belong to it. At the body's end
    /// the framing is `Head` again and the rest of `bytes` is not taken.
    fn advance(&mut self, bytes: &[u8]) -> usize {
        let mut taken = 0;
        while taken < bytes.len() {
            match self {
                Framing::Head => return taken,
                Framing::Opaque => return bytes.len(),
                Framing::Length(left) => {
                    let n = (*left).min((bytes.len() - taken) as u64);
                    taken += n as usize;
                    *left -= n;
                    if *left == 0 {
                        *self = Framing::Head;
                    }
                }
                Framing::Chunked(Chunk::Data(left)) => {
                    let n = (*left).min((bytes.len() - taken) as u64);
                    taken += n as usize;
                    *left -= n;
                    if *left == 0 {
                        *self = Framing::Chunked(Chunk::DataEnd);
                    }
                }
                Framing::Chunked(chunk) => {
                    let b = bytes[taken];
                    taken += 1;
                    *self = match (*chunk, b) {
                        (Chunk::Size { size: 0, .. }, b'\n') => Framing::Chunked(Chunk::Trailer(0)),
                        (Chunk::Size { size, .. }, b'\n') => Framing::Chunked(Chunk::Data(size)),
                        (Chunk::Size { size, done: false }, b) if b.is_ascii_hexdigit() => {
                            let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
                            match size.checked_mul(16).and_then(|s| s.checked_add(digit)) {
                                Some(size) => Framing::Chunked(Chunk::Size { size, done: false }),
                                None => Framing::Opaque,
                            }
                        }
                        (Chunk::Size { size, .. }, _) => {
                            Framing::Chunked(Chunk::Size { size, done: true })
                        }
                        (Chunk::DataEnd, b'\n') => Framing::Chunked(Chunk::Size {
                            size: 0,
                            done: false,
                        }),
                        (Chunk::DataEnd, _) => Framing::Chunked(Chunk::DataEnd),
                        (Chunk::Trailer(0), b'\n') => Framing::Head,
                        (Chunk::Trailer(_), b'\n') => Framing::Chunked(Chunk::Trailer(0)),
                        (Chunk::Trailer(n), b'\r') => Framing::Chunked(Chunk::Trailer(n)),
                        (Chunk::Trailer(n), _) => Framing::Chunked(Chunk::Trailer(n + 1)),
                        (Chunk::Data(_), _) => unreachable!("data is taken above"),
                    };
                }
            }
        }
        taken
    }
}

/// A connection's IO whose writes are followed response by response, and
/// hyper's automatic error answers given the JSON error body.
pub struct Rewriting<IO> {
    io: IO,
    answers: Answers,
    framing: Framing,
    /// A response head being collected, until its blank line.
    head: Vec<u8>,
    /// Bytes taken from hyper and not yet written (collected heads, maybe
    /// rewritten); they go out before anything taken after them.
    pending: Vec<u8>,
    /// How much of `pending` is written.
    pending_written: usize,
}

impl<IO> Rewriting<IO> {
    pub fn new(io: IO, answers: Answers) -> Rewriting<IO> {
        Rewriting {
            io,
            answers,
            framing: Framing::Head,
            head: Vec::new(),
            pending: Vec::new(),
            pending_written: 0,
        }
    }

    /// Takes bytes of a response head from `bytes`; how many. When the head
    /// is whole it is judged and queued to be written.
    fn collect_head(&mut self, bytes: &[u8]) -> usize {
        let from = self.head.len().saturating_sub(3);
        self.head.extend_from_slice(bytes);
        let Some(end) = find(&self.head[from..], b"\r\n\r\n").map(|at| from + at + 4) else {
            if self.head.len() > MAX_FOLLOWED_HEAD_BYTES {
                self.give_up();
            }
            return bytes.len();
        };
        let beyond = self.head.len() - end;
        self.head.truncate(end);
        let head = std::mem::take(&mut self.head);
        let (written, framing) = judge(&head, &self.answers);
        self.pending.extend_from_slice(&written);
        self.framing = framing;
        bytes.len() - beyond
    }

    /// Stops following: what was held goes out as it came.
    fn give_up(&mut self) {
        let head = std::mem::take(&mut self.head);
        self.pending.extend_from_slice(&head);
        self.framing = Framing::Opaque;
    }
}

impl<IO: AsyncWrite + Unpin> Rewriting<IO> {
    /// Writes what is pending; ready when nothing is.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pending_written < self.pending.len() {
            let n = ready!(
                Pin::new(&mut self.io).poll_write(cx, &self.pending[self.pending_written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending_written += n;
        }
        self.pending.clear();
        self.pending_written = 0;
        Poll::Ready(Ok(()))
    }

    /// Every write: a head is collected, a body (behind what is pending)
    /// written no further than its end.
    fn poll_send(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let Some(first) = bufs.iter().find(|b| !b.is_empty()) else {
            return Poll::Ready(Ok(0));
        };
        loop {
            if self.framing == Framing::Head {
                return Poll::Ready(Ok(self.collect_head(first)));
            }
            // The bytes of `bufs` that belong to this body.
            let mut limit = usize::MAX;
            if self.framing != Framing::Opaque {
                let mut ahead = self.framing;
                limit = 0;
                for b in bufs {
                    let n = ahead.advance(b);
                    limit += n;
                    if n < b.len() {
                        break;
                    }
                }
            }
            let pending = &self.pending[self.pending_written..];
            let mut parts = Vec::with_capacity(bufs.len() + 1);
            if !pending.is_empty() {
                parts.push(IoSlice::new(pending));
            }
            let mut room = limit;
            for b in bufs {
                if room == 0 {
                    break;
                }
                let n = b.len().min(room);
                if n > 0 {
                    parts.push(IoSlice::new(&b[..n]));
                }
                room -= n;
            }
            let pending_len = pending.len();
            let n = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &parts))?;
            if n == 0 {
                return Poll::Ready(Ok(0));
            }
            let from_pending = n.min(pending_len);
            self.pending_written += from_pending;
            if self.pending_written == self.pending.len() {
                self.pending.clear();
                self.pending_written = 0;
            }
            let mut taken = n - from_pending;
            if taken == 0 {
                continue;
            }
            let total = taken;
            for b in bufs {
                if taken == 0 {
                    break;
                }
                let n = b.len().min(taken);
                self.framing.advance(&b[..n]);
                taken -= n;
            }
            return Poll::Ready(Ok(total));
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewriting<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // hyper flushes whole heads; one cut short would wait for ever.
        if !this.head.is_empty() {
            this.give_up();
        }
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.head.is_empty() {
            this.give_up();
        }
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewriting<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A whole response head: what to write for it, and how its body is framed.
fn judge(head: &[u8], answers: &Answers) -> (Vec<u8>, Framing) {
    let Some(parsed) = Head::parse(head) else {
        return (head.to_vec(), Framing::Opaque);
    };
    // An interim answer (100 Continue) is hyper's, and no response's end.
    if (100..200).contains(&parsed.status) {
        return (head.to_vec(), Framing::Head);
    }
    let Some(answers_head) = answers.pop() else {
        if let Some(rewritten) = parsed.rewritten() {
            tracing::debug!(
                status = parsed.status,
                "hyper's automatic answer given the JSON error body"
            );
            return (rewritten, Framing::Head);
        }
        return (head.to_vec(), parsed.framing(false));
    };
    (head.to_vec(), parsed.framing(answers_head))
}

/// A response head's status line and headers.
struct Head<'a> {
    status_line: &'a [u8],
    status: u16,
    headers: Vec<(&'a [u8], &'a [u8])>,
}

impl<'a> Head<'a> {
    fn parse(head: &'a [u8]) -> Option<Head<'a>> {
        let text = head.strip_suffix(b"\r\n\r\n")?;
        let mut lines = text
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let status_line = lines.next()?;
        if !status_line.starts_with(b"HTTP/1.") {
            return None;
        }
        let status = std::str::from_utf8(status_line.get(9..12)?)
            .ok()?
            .parse()
            .ok()?;
        let headers = lines
            .map(|line| {
                let colon = line.iter().position(|&b| b == b':')?;
                Some((&line[..colon], line[colon + 1..].trim_ascii()))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Head {
            status_line,
            status,
            headers,
        })
    }

    fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| *v)
    }

    /// How the body after this head is framed (RFC 9112 section 6.3).
    fn framing(&self, answers_head: bool) -> Framing {
        if answers_head || matches!(self.status, 204 | 304) {
            return Framing::Head;
        }
        let chunked = self.header("transfer-encoding").is_some_and(|v| {
            v.rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
        });
        if chunked {
            return Framing::Chunked(Chunk::Size {
                size: 0,
                done: false,
            });
        }
        let length = self
            .header("content-length")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse::<u64>().ok());
        match length {
            Some(0) => Framing::Head,
            Some(n) => Framing::Length(n),
            None => Framing::Opaque,
        }
    }

    /// hyper's automatic answer with the JSON error body; `None` for any
    /// other head.
    fn rewritten(&self) -> Option<Vec<u8>> {
        let (code, message) = match self.status {
            400 => (
                "malformed_request",
                "the request's head is not valid HTTP/1.1 (its request line or a header)",
            ),
            414 => ("uri_too_long", "the request's URI is too long"),
            431 => (
                "head_too_large",
                "the request's head is over 64 KiB or has over 100 header lines",
            ),
            _ => return None,
        };
        if self.header("content-type").is_some() || self.header("transfer-encoding").is_some() {
            return None;
        }
        if self.header("content-length").is_some_and(|v| v != b"0") {
            return None;
        }
        let body = serde_json::to_vec(&ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
                field: None,
            },
        })
        .expect("an error body serializes");
        let mut out = Vec::with_capacity(256 + body.len());
        out.extend_from_slice(self.status_line);
        out.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in &self.headers {
            if !name.eq_ignore_ascii_case(b"content-length") {
                out.extend_from_slice(name);
                out.extend_from_slice(b": ");
                out.extend_from_slice(value);
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes at most `per_write` bytes a write.
    struct Sink {
        written: Vec<u8>,
        per_write: usize,
        vectored: bool,
    }

    impl AsyncWrite for Sink {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let n = buf.len().min(this.per_write);
            this.written.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let mut room = if this.vectored {
                this.per_write
            } else {
                bufs.iter()
                    .find(|b| !b.is_empty())
                    .map_or(0, |b| b.len())
                    .min(this.per_write)
            };
            let mut n = 0;
            for b in bufs {
                let k = b.len().min(room);
                this.written.extend_from_slice(&b[..k]);
                room -= k;
                n += k;
                if !this.vectored && k > 0 {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            self.vectored
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Writes `pieces` as hyper would (each write of `group` pieces at a
    /// time, vectored, repeated until taken whole), then flushes; what the
    /// socket got.
    fn through(
        answers: &Answers,
        pieces: &[&[u8]],
        group: usize,
        per_write: usize,
        vectored: bool,
    ) -> Vec<u8> {
        let sink = Sink {
            written: Vec::new(),
            per_write,
            vectored,
        };
        let mut w = Rewriting::new(sink, answers.clone());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut queue: Vec<Vec<u8>> = pieces.iter().map(|p| p.to_vec()).collect();
        while !queue.is_empty() {
            let take = group.min(queue.len());
            let slices: Vec<IoSlice<'_>> = queue[..take].iter().map(|p| IoSlice::new(p)).collect();
            let Poll::Ready(Ok(mut n)) = Pin::new(&mut w).poll_write_vectored(&mut cx, &slices)
            else {
                panic!("the sink is always ready");
            };
            assert!(n > 0, "a write of {take} pieces took nothing");
            while n > 0 {
                let k = n.min(queue[0].len());
                queue[0].drain(..k);
                n -= k;
                if queue[0].is_empty() {
                    queue.remove(0);
                }
            }
        }
        assert!(Pin::new(&mut w).poll_flush(&mut cx).is_ready());
        w.io.written
    }

    /// Every way of cutting the writes gives the same bytes.
    fn every_way(answers: impl Fn() -> Answers, pieces: &[&[u8]]) -> Vec<u8> {
        let whole = through(&answers(), pieces, usize::MAX, usize::MAX, true);
        for group in [1, 2, usize::MAX] {
            for per_write in [1, 3, 7, 64, usize::MAX] {
                for vectored in [true, false] {
                    let got = through(&answers(), pieces, group, per_write, vectored);
                    assert_eq!(
                        String::from_utf8_lossy(&got),
                        String::from_utf8_lossy(&whole),
                        "group {group}, {per_write} bytes a write, vectored {vectored}"
                    );
                }
            }
        }
        whole
    }

    const HYPER_431: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Thu, 26 Nov 2026 10:00:00 GMT\r\n\r\n";

    fn answers(heads: &[bool]) -> Answers {
        let a = Answers::default();
        for h in heads {
            a.push(*h);
        }
        a
    }

    fn split(out: &[u8]) -> Vec<(String, Vec<u8>)> {
        // Responses of this test are framed by Content-Length only.
        let mut rest = out;
        let mut responses = Vec::new();
        while let Some(end) = find(rest, b"\r\n\r\n") {
            let head = String::from_utf8(rest[..end].to_vec()).unwrap();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.parse().unwrap());
            let body = rest[end + 4..end + 4 + length].to_vec();
            rest = &rest[end + 4 + length..];
            responses.push((head, body));
        }
        assert!(
            rest.is_empty(),
            "left over: {:?}",
            String::from_utf8_lossy(rest)
        );
        responses
    }

    #[test]
    fn hypers_431_gets_the_json_error_body_with_its_length() {
        let out = every_way(Answers::default, &[HYPER_431]);
        let responses = split(&out);
        assert_eq!(responses.len(), 1);
        let (head, body) = &responses[0];
        assert!(
            head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{head}"
        );
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        assert!(head.contains("date: Thu, 26 Nov 2026"), "{head}");
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["error"]["code"], "head_too_large");
    }

    #[test]
    fn hypers_400_and_414_are_rewritten_too_and_other_statuses_are_not() {
        for (status, code) in [
            ("400 Bad Request", "malformed_request"),
            ("414 URI Too Long", "uri_too_long"),
        ] {
            let head = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
            let out = every_way(Answers::default, &[head.as_bytes()]);
            let (_, body) = &split(&out)[0];
            let v: serde_json::Value = serde_json::from_slice(body).unwrap();
            assert_eq!(v["error"]["code"], code);
        }
        let other = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(every_way(Answers::default, &[other]), other);
    }

    #[test]
    fn the_services_own_answers_pass_unchanged_even_a_bare_400() {
        let bare = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        let json = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        let pieces: &[&[u8]] = &[bare, json];
        assert_eq!(
            every_way(|| answers(&[false, false]), pieces),
            pieces.concat()
        );
    }

    #[test]
    fn a_431_after_bodies_of_every_framing_is_found_at_its_start() {
        // A body that looks like hyper's answer is a body, not an answer.
        let lookalike = HYPER_431;
        let sized = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/csv\r\ncontent-length: {}\r\n\r\n",
            lookalike.len()
        );
        let chunked =
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
        let chunk_head = format!("{:X}\r\n", lookalike.len());
        let head_answer =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 40\r\n\r\n";
        let pieces: &[&[u8]] = &[
            sized.as_bytes(),
            lookalike,
            chunked,
            chunk_head.as_bytes(),
            lookalike,
            b"\r\n0\r\n\r\n",
            head_answer,
            b"HTTP/1.1 100 Continue\r\n\r\n",
            HYPER_431,
        ];
        let out = every_way(|| answers(&[false, false, true]), pieces);
        let before: usize = pieces[..8].iter().map(|p| p.len()).sum();
        assert_eq!(
            out[..before],
            pieces[..8].concat()[..],
            "the bodies pass unchanged"
        );
        let last = String::from_utf8_lossy(&out[before..]);
        assert!(last.starts_with("HTTP/1.1 431"), "{last}");
        assert!(last.contains("content-type: application/json"), "{last}");
        assert!(last.ends_with("}"), "{last}");
    }

    #[test]
    fn a_stream_it_cannot_follow_passes_through_untouched() {
        let unframed = b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\n";
        let pieces: &[&[u8]] = &[unframed, b"body to the close", HYPER_431];
        assert_eq!(every_way(|| answers(&[false]), pieces), pieces.concat());
        let garbage: &[&[u8]] = &[b"SSH-2.0\r\n\r\n", HYPER_431];
        assert_eq!(every_way(Answers::default, garbage), garbage.concat());
    }
}
