//! Experiment, not part of medusa-auth-proxy: a minimal GET-only HTTP/1.1 keep-alive proxy on
//! io_uring that injects `Authorization: Bearer <token>`, one upstream connection per client
//! connection, submissions batched per completion-queue drain. Measures what batched
//! submission buys on the shared-core harness.
//!
//! Usage: uringproxy LISTEN_ADDR UPSTREAM (host:port or http://host:port). GET only: a
//! request body is not forwarded; responses must carry Content-Length. No checks, no header
//! hygiene, no token refresh (one login at start).
use io_uring::{opcode, types, IoUring};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};

const ACCEPT: u64 = 0;
const C_RECV: u64 = 1;
const U_SEND: u64 = 2;
const U_RECV: u64 = 3;
const C_SEND: u64 = 4;
const BUF: usize = 65536;

struct Conn {
    cfd: RawFd,
    ufd: RawFd,
    cbuf: Vec<u8>,
    clen: usize,
    out: Vec<u8>,
    sent: usize,
    ubuf: Vec<u8>,
    ulen: usize,
    resp_len: usize,
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn content_length(head: &[u8]) -> usize {
    let s = String::from_utf8_lossy(head).to_ascii_lowercase();
    for line in s.split("\r\n") {
        if let Some(v) = line.strip_prefix("content-length:") {
            return v.trim().parse().unwrap_or(0);
        }
    }
    0
}

fn login(upstream: &str) -> String {
    let mut s = TcpStream::connect(upstream).unwrap();
    let body = b"{\"email\":\"a\",\"password\":\"b\"}";
    write!(s, "POST /admin/auth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).unwrap();
    s.write_all(body).unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    let i = r.find("\"access_token\":\"").unwrap() + 16;
    let j = r[i..].find('"').unwrap();
    r[i..i + j].to_string()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen = &args[1];
    // host:port, or a URL as bench/run.sh exports it (BENCH_UPSTREAM_URL).
    let upstream = &args[2]
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let token = login(upstream);
    let auth = format!("Authorization: Bearer {token}\r\n").into_bytes();
    let listener = TcpListener::bind(listen.as_str()).unwrap();
    let lfd = listener.as_raw_fd();
    let mut ring = IoUring::new(4096).unwrap();
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut alen: libc::socklen_t = std::mem::size_of::<libc::sockaddr_storage>() as _;
    let mut pending: Vec<io_uring::squeue::Entry> = Vec::new();
    pending.push(
        opcode::Accept::new(types::Fd(lfd), &mut addr as *mut _ as *mut _, &mut alen)
            .build()
            .user_data(ACCEPT),
    );
    loop {
        {
            let mut sq = ring.submission();
            for e in pending.drain(..) {
                unsafe { sq.push(&e).unwrap() };
            }
        }
        ring.submit_and_wait(1).unwrap();
        let cqes: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (ud, res) in cqes {
            let op = ud & 7;
            let idx = (ud >> 3) as usize;
            if op == ACCEPT {
                if res >= 0 {
                    let cfd = res;
                    let up = TcpStream::connect(upstream.as_str()).unwrap();
                    up.set_nodelay(true).unwrap();
                    let one: libc::c_int = 1;
                    unsafe {
                        libc::setsockopt(
                            cfd,
                            libc::IPPROTO_TCP,
                            libc::TCP_NODELAY,
                            &one as *const _ as *const _,
                            4,
                        );
                    }
                    let ufd = up.into_raw_fd();
                    let c = Conn {
                        cfd,
                        ufd,
                        cbuf: vec![0; BUF],
                        clen: 0,
                        out: Vec::with_capacity(BUF),
                        sent: 0,
                        ubuf: vec![0; BUF],
                        ulen: 0,
                        resp_len: 0,
                    };
                    let slot = conns.iter().position(|c| c.is_none()).unwrap_or_else(|| {
                        conns.push(None);
                        conns.len() - 1
                    });
                    conns[slot] = Some(c);
                    let c = conns[slot].as_mut().unwrap();
                    pending.push(
                        opcode::Recv::new(types::Fd(cfd), c.cbuf.as_mut_ptr(), BUF as u32)
                            .build()
                            .user_data(((slot as u64) << 3) | C_RECV),
                    );
                }
                alen = std::mem::size_of::<libc::sockaddr_storage>() as _;
                pending.push(
                    opcode::Accept::new(types::Fd(lfd), &mut addr as *mut _ as *mut _, &mut alen)
                        .build()
                        .user_data(ACCEPT),
                );
                continue;
            }
            let Some(c) = conns[idx].as_mut() else {
                continue;
            };
            let tag = (idx as u64) << 3;
            if res <= 0 && !(op == U_SEND || op == C_SEND) || res < 0 {
                unsafe {
                    libc::close(c.cfd);
                    libc::close(c.ufd);
                }
                conns[idx] = None;
                continue;
            }
            let n = res as usize;
            match op {
                C_RECV => {
                    c.clen += n;
                    if let Some(end) = find(&c.cbuf[..c.clen], b"\r\n\r\n") {
                        let line_end = find(&c.cbuf[..c.clen], b"\r\n").unwrap() + 2;
                        c.out.clear();
                        c.out.extend_from_slice(&c.cbuf[..line_end]);
                        c.out.extend_from_slice(&auth);
                        c.out.extend_from_slice(&c.cbuf[line_end..end + 4]);
                        c.clen = 0;
                        c.sent = 0;
                        pending.push(
                            opcode::Send::new(types::Fd(c.ufd), c.out.as_ptr(), c.out.len() as u32)
                                .build()
                                .user_data(tag | U_SEND),
                        );
                    } else {
                        pending.push(
                            opcode::Recv::new(
                                types::Fd(c.cfd),
                                unsafe { c.cbuf.as_mut_ptr().add(c.clen) },
                                (BUF - c.clen) as u32,
                            )
                            .build()
                            .user_data(tag | C_RECV),
                        );
                    }
                }
                U_SEND => {
                    c.sent += n;
                    if c.sent < c.out.len() {
                        pending.push(
                            opcode::Send::new(
                                types::Fd(c.ufd),
                                unsafe { c.out.as_ptr().add(c.sent) },
                                (c.out.len() - c.sent) as u32,
                            )
                            .build()
                            .user_data(tag | U_SEND),
                        );
                    } else {
                        c.ulen = 0;
                        c.resp_len = 0;
                        pending.push(
                            opcode::Recv::new(types::Fd(c.ufd), c.ubuf.as_mut_ptr(), BUF as u32)
                                .build()
                                .user_data(tag | U_RECV),
                        );
                    }
                }
                U_RECV => {
                    c.ulen += n;
                    if c.resp_len == 0 {
                        if let Some(end) = find(&c.ubuf[..c.ulen], b"\r\n\r\n") {
                            c.resp_len = end + 4 + content_length(&c.ubuf[..end]);
                        }
                    }
                    if c.resp_len != 0 && c.ulen >= c.resp_len {
                        c.sent = 0;
                        pending.push(
                            opcode::Send::new(types::Fd(c.cfd), c.ubuf.as_ptr(), c.resp_len as u32)
                                .build()
                                .user_data(tag | C_SEND),
                        );
                    } else {
                        pending.push(
                            opcode::Recv::new(
                                types::Fd(c.ufd),
                                unsafe { c.ubuf.as_mut_ptr().add(c.ulen) },
                                (BUF - c.ulen) as u32,
                            )
                            .build()
                            .user_data(tag | U_RECV),
                        );
                    }
                }
                C_SEND => {
                    c.sent += n;
                    if c.sent < c.resp_len {
                        pending.push(
                            opcode::Send::new(
                                types::Fd(c.cfd),
                                unsafe { c.ubuf.as_ptr().add(c.sent) },
                                (c.resp_len - c.sent) as u32,
                            )
                            .build()
                            .user_data(tag | C_SEND),
                        );
                    } else {
                        c.clen = 0;
                        pending.push(
                            opcode::Recv::new(types::Fd(c.cfd), c.cbuf.as_mut_ptr(), BUF as u32)
                                .build()
                                .user_data(tag | C_RECV),
                        );
                    }
                }
                _ => {}
            }
        }
    }
}
