//! The WireGuard mesh: interface [`INTERFACE`] carries member-to-member
//! traffic, one WireGuard peer per member that announced a mesh.
//!
//! Each node's mesh address is derived from the network and node ids
//! ([`maki_protocol::mesh`]), so the interface holds one address, the
//! node's own, with the network's /48: the kernel routes the whole mesh
//! to the interface, and WireGuard picks the peer by its /128.
//!
//! The peer list is rebuilt from the member list on every change and
//! handed over whole. With the userspace device that is the only safe way
//! (its fork of boringtun panics when a peer is changed in place); the
//! kernel takes the difference, peer by peer, since its whole-device call
//! would first flush the interface's address from under the sockets bound
//! to it.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::Path,
    sync::Mutex,
};

use defguard_boringtun::device::{DeviceConfig, DeviceHandle};
use defguard_wireguard_rs::{
    InterfaceConfiguration, Kernel, Userspace, WGApi, WireguardInterfaceApi, key::Key,
    net::IpAddrMask, peer::Peer,
};
use maki_protocol::{Hash, MeshPeer, PeerRecord, PublicKey, mesh};
use tracing::{debug, info, warn};

use crate::config::MeshMode;

/// The mesh's network interface.
pub const INTERFACE: &str = "maki0";

/// WireGuard's usual MTU: 1500 less its overhead over IPv6.
pub const MTU: u32 = 1420;

/// Keeps NAT mappings open between members behind NAT.
const KEEPALIVE_SECS: u16 = 25;

const KEY_FILE: &str = "wireguard.key";

/// Which WireGuard implementation runs the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Kernel,
    Userspace,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Kernel => "kernel",
            Backend::Userspace => "userspace",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    #[error("{path}: {source}")]
    Key {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} is not a WireGuard key (64 hex characters)")]
    BadKey(String),
    #[error(
        "cannot create the WireGuard interface {INTERFACE} ({backend}): {message}; the mesh needs root (CAP_NET_ADMIN), and the userspace device /dev/net/tun"
    )]
    Create {
        backend: &'static str,
        message: String,
    },
    #[error(
        "an interface {INTERFACE} exists already: another node's mesh in this network namespace (one per namespace), or a WireGuard made by hand (remove it: ip link del {INTERFACE})"
    )]
    InUse,
    #[error("kernel WireGuard is not available here ({0}); set mesh = \"userspace\" or \"auto\"")]
    NoKernel(String),
    #[error("cannot configure {INTERFACE}: {0}")]
    Configure(String),
}

/// One WireGuard peer (a member, or an external peer an admin added):
/// who, where, and its mesh address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshMember {
    /// Who it is, for people: a member's short id, or an external name.
    pub name: String,
    pub key: [u8; 32],
    /// Where its WireGuard listens (`None`: it has announced no public IP,
    /// so only it can start a handshake).
    pub endpoint: Option<SocketAddr>,
    pub addr: Ipv6Addr,
}

impl MeshMember {
    /// The peer a member's record describes, in `network`.
    pub fn of(network: &Hash, node: PublicKey, ips: &[IpAddr], peer: &MeshPeer) -> Self {
        // An IPv4 address first: most providers' underlay.
        let ip = ips
            .iter()
            .find(|ip| ip.is_ipv4())
            .or_else(|| ips.first())
            .copied();
        Self {
            name: node.fmt_short().to_string(),
            key: peer.key,
            endpoint: ip.map(|ip| SocketAddr::new(ip, peer.port)),
            addr: mesh::member_addr(network, &node),
        }
    }

    /// An external peer an admin added, in `network`.
    pub fn external(network: &Hash, peer: &PeerRecord) -> Self {
        Self {
            name: peer.name.clone(),
            key: peer.key,
            endpoint: peer.endpoint,
            addr: mesh::external_addr(network, &peer.key),
        }
    }

    fn peer(&self) -> Peer {
        let mut p = Peer::new(Key::new(self.key));
        p.endpoint = self.endpoint;
        p.persistent_keepalive_interval = Some(KEEPALIVE_SECS);
        p.allowed_ips = vec![IpAddrMask::host(IpAddr::V6(self.addr))];
        p
    }
}

enum Device {
    Kernel(WGApi<Kernel>),
    Userspace(UserspaceDevice),
}

/// The in-process WireGuard (defguard's boringtun), configured over a
/// socket pair: its configuration socket would otherwise be a file shared
/// by every network namespace, and would come with handlers that take
/// SIGINT and SIGTERM from the node.
struct UserspaceDevice {
    /// Dropped last: it stops the device and removes the interface.
    _handle: DeviceHandle,
    /// Our end of the device's configuration (UAPI) socket.
    uapi: std::os::unix::net::UnixStream,
}

impl UserspaceDevice {
    fn create() -> Result<Self, String> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
        ours.set_read_timeout(Some(std::time::Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        let config = DeviceConfig {
            n_threads: 2,
            use_connected_socket: true,
            use_multi_queue: true,
            // The device owns this end from here on.
            uapi_fd: std::os::fd::IntoRawFd::into_raw_fd(theirs),
        };
        let handle = DeviceHandle::new(INTERFACE, config).map_err(|e| e.to_string())?;
        Ok(Self {
            _handle: handle,
            uapi: ours,
        })
    }

    /// One `set` of the UAPI protocol: lines of `key=value`.
    fn set(&self, body: &str) -> Result<(), String> {
        use std::io::{BufRead, Write};
        let mut w = &self.uapi;
        w.write_all(format!("set=1\n{body}\n").as_bytes())
            .map_err(|e| e.to_string())?;
        let mut reader = std::io::BufReader::new(&self.uapi);
        let mut errno = None;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                return Err("the device closed its configuration socket".into());
            }
            let line = line.trim();
            if line.is_empty() {
                break;
            }
            if let Some(n) = line.strip_prefix("errno=") {
                errno = n.parse::<i32>().ok();
            }
        }
        match errno {
            Some(0) => Ok(()),
            Some(n) => Err(std::io::Error::from_raw_os_error(n).to_string()),
            None => Err("the device did not answer".into()),
        }
    }
}

/// The running mesh interface; removed when dropped.
pub struct Mesh {
    backend: Backend,
    /// Why this backend (for the log and for people).
    reason: String,
    key: Key,
    port: u16,
    addr: Ipv6Addr,
    device: Mutex<Device>,
    /// The peers last handed to the device, by WireGuard key.
    peers: Mutex<HashMap<[u8; 32], MeshMember>>,
    /// The last hand-over failed part way: what the device holds is
    /// read from it next time (kernel), or replaced whole (userspace).
    unsure: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("backend", &self.backend)
            .field("port", &self.port)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Mesh {
    /// Brings up [`INTERFACE`] with this node's mesh address and no peers,
    /// on the backend `mode` asks for. `Ok(None)` when the mesh is off.
    pub fn start(
        mode: MeshMode,
        data_dir: &Path,
        port: u16,
        network: &Hash,
        node: &PublicKey,
    ) -> Result<Option<Self>, MeshError> {
        // Auto: making the interface is the test (it loads the module if
        // the kernel has it as one); the userspace device is the fallback.
        let (backend, reason, device) = match mode {
            MeshMode::Off => return Ok(None),
            MeshMode::Kernel => (
                Backend::Kernel,
                "mesh = \"kernel\"".to_owned(),
                create(Backend::Kernel)?,
            ),
            MeshMode::Userspace => (
                Backend::Userspace,
                "mesh = \"userspace\"".to_owned(),
                create(Backend::Userspace)?,
            ),
            MeshMode::Auto => match create(Backend::Kernel) {
                Ok(device) => (
                    Backend::Kernel,
                    "the kernel has WireGuard".to_owned(),
                    device,
                ),
                Err(why) => (
                    Backend::Userspace,
                    format!("the kernel has no WireGuard ({why})"),
                    create(Backend::Userspace)?,
                ),
            },
        };
        let key = load_or_create_key(data_dir)?;
        let addr = mesh::member_addr(network, node);
        let mut mesh = Self {
            backend,
            reason,
            key,
            port,
            addr,
            device: Mutex::new(device),
            peers: Mutex::default(),
            unsure: std::sync::atomic::AtomicBool::new(false),
        };
        mesh.configure()?;
        mesh.usable()?;
        info!(
            interface = INTERFACE,
            backend = backend.name(),
            why = %mesh.reason,
            %addr,
            port = mesh.port,
            "mesh up"
        );
        Ok(Some(mesh))
    }

    /// The interface's address, key and port, with no peers yet.
    fn configure(&mut self) -> Result<(), MeshError> {
        let err = |e: defguard_wireguard_rs::error::WireguardInterfaceError| {
            MeshError::Configure(e.to_string())
        };
        let address = IpAddrMask::new(IpAddr::V6(self.addr), mesh::NETWORK_PREFIX_LEN);
        let device = self.device.get_mut().map_err(|_| poisoned())?;
        match device {
            Device::Kernel(api) => {
                let config = InterfaceConfiguration {
                    name: INTERFACE.to_owned(),
                    prvkey: self.key.to_string(),
                    addresses: vec![address],
                    port: self.port,
                    peers: Vec::new(),
                    mtu: Some(MTU),
                    fwmark: None,
                };
                api.configure_interface(&config).map_err(err)?;
            }
            Device::Userspace(dev) => {
                dev.set(&format!(
                    "private_key={}\nlisten_port={}\n",
                    self.key.to_lower_hex(),
                    self.port
                ))
                .map_err(MeshError::Configure)?;
                link::up(INTERFACE, MTU).map_err(MeshError::Configure)?;
                WGApi::<Userspace>::new(INTERFACE)
                    .and_then(|api| api.assign_address(&address))
                    .map_err(err)?;
            }
        }
        Ok(())
    }

    /// Waits until the interface's address can be bound: a new IPv6
    /// address is tentative for a moment (duplicate address detection,
    /// which a TUN device skips, still runs from a work queue), and the
    /// endpoint binds it next.
    fn usable(&self) -> Result<(), MeshError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match std::net::UdpSocket::bind((self.addr, 0)) {
                Ok(_) => return Ok(()),
                Err(e) if std::time::Instant::now() > deadline => {
                    return Err(MeshError::Configure(format!(
                        "its address {} is not usable: {e}",
                        self.addr
                    )));
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// This node's WireGuard public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.public_key().as_array()
    }

    /// This node's mesh address.
    pub fn addr(&self) -> Ipv6Addr {
        self.addr
    }

    /// What this node's record announces; `p2p_port` is where its
    /// endpoint listens at its mesh address.
    pub fn announce(&self, p2p_port: u16) -> MeshPeer {
        MeshPeer {
            key: self.key.public_key().as_array(),
            port: self.port,
            p2p_port,
            backend: self.backend.name().to_owned(),
        }
    }

    /// Makes `members` the device's whole peer list (this node skipped).
    /// Two peers claiming one WireGuard key get neither: the device could
    /// route the address of only one of them, and the key is not either's
    /// alone to use.
    pub fn set_peers(&self, members: impl IntoIterator<Item = MeshMember>) {
        let own = self.key.public_key().as_array();
        let mut next: HashMap<[u8; 32], MeshMember> = HashMap::new();
        let mut clashing = Vec::new();
        for m in members {
            if m.addr == self.addr {
                continue;
            }
            if m.key == own || next.contains_key(&m.key) {
                clashing.push(m.key);
                continue;
            }
            next.insert(m.key, m);
        }
        for key in &clashing {
            if let Some(m) = next.remove(key) {
                warn!(peer = %m.name, "two peers announce one WireGuard key: neither is a mesh peer");
            }
        }
        let Ok(mut current) = self.peers.lock() else {
            return;
        };
        let unsure = self.unsure.load(std::sync::atomic::Ordering::Relaxed);
        if *current == next && !unsure {
            return;
        }
        let Ok(device) = self.device.lock() else {
            return;
        };
        let result = match &*device {
            Device::Userspace(dev) => {
                // Peers without an endpoint first: this device carries a
                // field of one peer over to the next that lacks it.
                let mut peers: Vec<&MeshMember> = next.values().collect();
                peers.sort_by_key(|m| (m.endpoint.is_some(), m.key));
                let mut body = String::from("replace_peers=true\n");
                for m in peers {
                    body.push_str(&m.peer().as_uapi_update());
                }
                dev.set(&body)
            }
            Device::Kernel(api) => {
                let mut result = Ok(());
                // After a failure, what the device holds comes from the
                // device: a peer whose removal failed is removed now.
                let held: Vec<[u8; 32]> = if unsure {
                    match api.read_interface_data() {
                        Ok(host) => host.peers.keys().map(|k| k.as_array()).collect(),
                        Err(e) => {
                            result = Err(e.to_string());
                            current.keys().copied().collect()
                        }
                    }
                } else {
                    current.keys().copied().collect()
                };
                let (gone, changed) = kernel_changes(&held, &current, &next, unsure);
                for key in gone {
                    if let Err(e) = api.remove_peer(&Key::new(key)) {
                        result = Err(e.to_string());
                    }
                }
                for m in changed {
                    if let Err(e) = api.configure_peer(&m.peer()) {
                        result = Err(e.to_string());
                    }
                }
                result
            }
        };
        match result {
            Ok(()) => {
                debug!(peers = next.len(), "mesh peers set");
                *current = next;
                self.unsure
                    .store(false, std::sync::atomic::Ordering::Relaxed);
            }
            // The next change of members tries again with the whole list.
            Err(error) => {
                warn!(%error, "could not set the mesh peers");
                current.clear();
                self.unsure
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// What a kernel device is told to go from the peers it holds (`held`,
/// by key; `current`, as last handed over) to `next`: the keys to remove,
/// and the peers to configure (all of them when `unsure`: a configuration
/// that failed may have left a peer half set).
fn kernel_changes<'a>(
    held: &[[u8; 32]],
    current: &HashMap<[u8; 32], MeshMember>,
    next: &'a HashMap<[u8; 32], MeshMember>,
    unsure: bool,
) -> (Vec<[u8; 32]>, Vec<&'a MeshMember>) {
    let gone = held
        .iter()
        .filter(|k| !next.contains_key(*k))
        .copied()
        .collect();
    let changed = next
        .values()
        .filter(|m| unsure || current.get(&m.key) != Some(*m))
        .collect();
    (gone, changed)
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let Ok(device) = self.device.get_mut() else {
            return;
        };
        // The userspace device goes with its handle (and its interface
        // with it); its `remove_interface` would also reset the host's DNS.
        if let Device::Kernel(api) = device
            && let Err(error) = api.remove_interface()
        {
            warn!(%error, "could not remove {INTERFACE}");
        }
    }
}

/// Bringing the userspace device's interface up, by netlink.
mod link {
    use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
    use netlink_packet_route::{
        RouteNetlinkMessage,
        link::{LinkAttribute, LinkFlags, LinkMessage},
    };
    use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

    /// Sets `name` up with `mtu` (the kernel finds it by name).
    pub fn up(name: &str, mtu: u32) -> Result<(), String> {
        let mut link = LinkMessage::default();
        link.header.flags = LinkFlags::Up;
        link.header.change_mask = LinkFlags::Up;
        link.attributes.push(LinkAttribute::IfName(name.into()));
        link.attributes.push(LinkAttribute::Mtu(mtu));
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::SetLink(link));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        let socket = Socket::new(NETLINK_ROUTE).map_err(|e| e.to_string())?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| e.to_string())?;
        socket.send(&buf, 0).map_err(|e| e.to_string())?;
        let mut answer = vec![0u8; 8192];
        let n = socket
            .recv(&mut &mut answer[..], 0)
            .map_err(|e| e.to_string())?;
        let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&answer[..n])
            .map_err(|e| e.to_string())?;
        match reply.payload {
            NetlinkPayload::Error(e) if e.code.is_some() => Err(e.to_io().to_string()),
            _ => Ok(()),
        }
    }
}

fn poisoned() -> MeshError {
    MeshError::Configure("a thread panicked while configuring the mesh".into())
}

fn create(backend: Backend) -> Result<Device, MeshError> {
    let err = |e: defguard_wireguard_rs::error::WireguardInterfaceError| MeshError::Create {
        backend: backend.name(),
        message: e.to_string(),
    };
    match backend {
        Backend::Kernel => {
            let mut api = WGApi::<Kernel>::new(INTERFACE).map_err(err)?;
            // Left over by a node that did not stop cleanly.
            let _ = api.remove_interface();
            api.create_interface().map_err(|e| {
                // Making one loads the module, if the kernel has it.
                if Path::new("/sys/module/wireguard").exists() {
                    err(e)
                } else {
                    MeshError::NoKernel(format!("no wireguard module; {e}"))
                }
            })?;
            Ok(Device::Kernel(api))
        }
        // A TUN device lives only as long as the process that holds it, so
        // one that exists belongs to a live process: another node's mesh
        // in this network namespace (its device would quietly take this
        // one as a second queue), or a WireGuard someone made by hand.
        Backend::Userspace if Path::new(&format!("/sys/class/net/{INTERFACE}")).exists() => {
            Err(MeshError::InUse)
        }
        Backend::Userspace => UserspaceDevice::create()
            .map(Device::Userspace)
            .map_err(|message| MeshError::Create {
                backend: backend.name(),
                message,
            }),
    }
}

/// The node's WireGuard key, made on first use: `DATA_DIR/wireguard.key`
/// (hex, mode 0600).
fn load_or_create_key(dir: &Path) -> Result<Key, MeshError> {
    let path = dir.join(KEY_FILE);
    let shown = path.display().to_string();
    match std::fs::read_to_string(&path) {
        Ok(text) => Key::decode(text.trim()).map_err(|_| MeshError::BadKey(shown)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Key::generate();
            crate::identity::write_private(&path, key.to_lower_hex().as_bytes()).map_err(|e| {
                MeshError::Key {
                    path: shown.clone(),
                    source: std::io::Error::other(e.to_string()),
                }
            })?;
            Ok(key)
        }
        Err(source) => Err(MeshError::Key {
            path: shown,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(k: u8) -> MeshMember {
        MeshMember {
            name: format!("p{k}"),
            key: [k; 32],
            endpoint: None,
            addr: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(k)),
        }
    }

    fn set(peers: &[u8]) -> HashMap<[u8; 32], MeshMember> {
        peers.iter().map(|k| ([*k; 32], peer(*k))).collect()
    }

    /// A peer whose removal failed is still on the device: once the device
    /// is read again, it is removed, and every peer is configured again.
    #[test]
    fn a_kernel_removal_that_failed_is_tried_again() {
        let next = set(&[1, 2]);
        // As last handed over, without trouble: only what changed.
        let (gone, changed) = kernel_changes(&[[1; 32], [3; 32]], &set(&[1, 3]), &next, false);
        assert_eq!(gone, vec![[3; 32]]);
        assert_eq!(changed, vec![&peer(2)]);
        // The removal of 3 failed: `current` was cleared, the device
        // (read back) still holds 1 and 3.
        let (gone, mut changed) = kernel_changes(&[[1; 32], [3; 32]], &HashMap::new(), &next, true);
        assert_eq!(gone, vec![[3; 32]]);
        changed.sort_by_key(|m| m.key);
        assert_eq!(changed, vec![&peer(1), &peer(2)]);
    }

    #[test]
    fn the_key_is_made_once_and_kept() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let a = load_or_create_key(dir.path())?;
        let b = load_or_create_key(dir.path())?;
        assert_eq!(a.as_array(), b.as_array());
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))?.permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        std::fs::write(dir.path().join(KEY_FILE), "not a key")?;
        assert!(matches!(
            load_or_create_key(dir.path()),
            Err(MeshError::BadKey(_))
        ));
        Ok(())
    }

    #[test]
    fn a_member_is_reached_at_its_ipv4_first() {
        let net = Hash::of(b"n");
        let node = maki_protocol::SecretKey::from_bytes(&[3; 32]).public();
        let peer = MeshPeer {
            key: [1; 32],
            port: 51820,
            p2p_port: 51821,
            backend: "userspace".into(),
        };
        let ips: Vec<IpAddr> = vec![
            "2001:db8::1".parse().expect("ip"),
            "192.0.2.1".parse().expect("ip"),
        ];
        let m = MeshMember::of(&net, node, &ips, &peer);
        assert_eq!(m.endpoint, Some("192.0.2.1:51820".parse().expect("addr")));
        assert_eq!(m.addr, mesh::member_addr(&net, &node));
        assert_eq!(MeshMember::of(&net, node, &[], &peer).endpoint, None);
    }
}
