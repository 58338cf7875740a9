//! Loopback ports a test holds from the moment it picks one until the
//! process that serves it has it, so nothing else can take the port in
//! between.
//!
//! A [`HeldPort`] is bound and not listening: connecting to it is refused,
//! as to a port nothing serves, and no other socket can bind it. It ends in
//! one of three ways: handed to a program that takes a socket
//! ([`HeldPort::hand_to`], the systemd protocol `aggregator serve` reads),
//! turned into a listener of the test's own ([`HeldPort::listener`]), or,
//! for a program that can only bind an address itself (PostgreSQL, the SMTP
//! relay), let go just before that program starts ([`HeldPort::release`]).

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::process::Command;

use command_fds::{CommandFdExt, FdMapping};
use socket2::{Domain, Socket, Type};

/// The descriptor a handed-over socket has in the child (`SD_LISTEN_FDS_START`).
const FIRST_LISTEN_FD: i32 = 3;

/// A free port, bound by this process until it is handed on.
#[derive(Debug)]
pub struct HeldPort {
    socket: Socket,
    addr: SocketAddr,
}

impl HeldPort {
    /// Picks a free port of 127.0.0.1 and holds it.
    pub fn new() -> HeldPort {
        HeldPort::on(Ipv4Addr::LOCALHOST)
    }

    /// Picks a free port of `ip`, an address of this machine, and holds it.
    pub fn on(ip: Ipv4Addr) -> HeldPort {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("create a socket");
        socket
            .bind(&SocketAddr::from((ip, 0)).into())
            .unwrap_or_else(|e| panic!("bind a free port of {ip}: {e}"));
        let addr = socket
            .local_addr()
            .expect("a bound socket has an address")
            .as_socket()
            .expect("an IPv4 address");
        HeldPort { socket, addr }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Hands the port to the program `command` starts, listening, as
    /// descriptor 3 with `LISTEN_FDS=1`; this process lets go of it once
    /// `command` has started (and is dropped). Returns the address.
    pub fn hand_to(self, command: &mut Command) -> SocketAddr {
        self.listen();
        let fd = OwnedFd::from(self.socket);
        command
            .fd_mappings(vec![FdMapping {
                parent_fd: fd,
                child_fd: FIRST_LISTEN_FD,
            }])
            .expect("descriptor 3 is free in the command");
        command.env("LISTEN_FDS", "1").env_remove("LISTEN_PID");
        self.addr
    }

    /// The port as a listening socket of this process.
    pub fn listener(self) -> TcpListener {
        self.listen();
        TcpListener::from(self.socket)
    }

    /// Listens as servers do, with `SO_REUSEADDR`: its connections then
    /// leave no `TIME_WAIT` that stops a restarted server binding the port
    /// again. Only now: while held, no other socket may share the port.
    fn listen(&self) {
        self.socket
            .set_reuse_address(true)
            .expect("SO_REUSEADDR on the held port");
        self.socket.listen(1024).expect("listen on the held port");
    }

    /// Lets the port go, for a program that binds the address itself and
    /// is started right after: the only moment another could take it.
    pub fn release(self) -> SocketAddr {
        self.addr
    }
}

impl Default for HeldPort {
    fn default() -> Self {
        HeldPort::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    #[test]
    fn a_held_port_refuses_connections_and_cannot_be_bound_by_another() {
        let port = HeldPort::new();
        let refused = TcpStream::connect(port.addr()).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        assert!(TcpListener::bind(port.addr()).is_err(), "taken by the test");
    }

    #[test]
    fn a_held_port_becomes_a_listener_on_the_same_address() {
        let port = HeldPort::new();
        let addr = port.addr();
        let listener = port.listener();
        assert_eq!(listener.local_addr().unwrap(), addr);
        TcpStream::connect(addr).unwrap();
        listener.accept().unwrap();
    }

    #[test]
    fn a_handed_port_is_served_by_the_child_and_let_go_by_the_test() {
        // Python's socket module takes descriptor 3 as the listening socket.
        let port = HeldPort::new();
        let mut command = Command::new("python3");
        command.args([
            "-c",
            "import os,socket; assert os.environ['LISTEN_FDS'] == '1'; \
             s = socket.socket(fileno=3); c, _ = s.accept(); c.sendall(b'served')",
        ]);
        let addr = port.hand_to(&mut command);
        let mut child = command.spawn().expect("python3");
        drop(command);
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut TcpStream::connect(addr).unwrap(), &mut answer).unwrap();
        assert_eq!(answer, "served");
        assert!(child.wait().unwrap().success());
        // Neither the child nor the test holds it now.
        TcpListener::bind(addr).expect("the port is free again");
    }
}
