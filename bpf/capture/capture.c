//go:build ignore

// weir's eBPF capture (redirect mode "ebpf"). Six programs share the maps
// below; capture.go explains the design and attaches them.
//
//   cgroup/connect4, connect6   an enrolled pod's TCP connect() goes to the
//                               agent's in-pod listener (127.0.0.1 / ::1);
//                               the original destination goes into the
//                               socket's storage. A kernel-balanced service
//                               address (lb_services) goes straight to one
//                               of its endpoints instead, never to the agent
//   sockops (TCP_CONNECT_CB)    before the SYN leaves, the original
//                               destination is published under the socket's
//                               source (netns cookie, address, port): the
//                               agent's accepted socket sees that as its peer
//   cgroup/getpeername4, 6      the app sees the address it dialled, and an
//                               app accepting from the agent sees the real
//                               client (the agent tags its upstream socket)
//   sk_lookup                   per pod netns: new inbound connections for
//                               captured ports go to the agent's inbound
//                               listener (sockhash keyed by the pod address)
//   sockops (ESTABLISHED_CB)    acceleration: both sockets of a local pair
//                               the agent takes part in (app -> outbound
//                               listener, agent upstream -> app) go into
//                               the accel sockhash, keyed by their tuple
//   sockops (TIMEOUT_INIT,      same-node acceleration: a request socket
//            ESTABLISHED_CB)    records which netns took a SYN; the agent's
//                               upstream socket (tagged by the connect
//                               programs) and the server socket in that
//                               netns join the accel sockhash when their
//                               handshake's sequence numbers match
//   sk_msg                      on the accel sockhash: what one socket of a
//                               pair sends goes straight into its peer's
//                               receive queue, skipping TCP/IP, while the
//                               peer keeps up (peer_ready)
//
// Nothing happens for a network namespace that is not enrolled (one hash
// lookup), nor for sockets of the agent's own cgroups.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>

// bpf_ksym_exists came with libbpf 1.2; Debian 12 has 1.1.
#ifndef bpf_ksym_exists
#define bpf_ksym_exists(sym) (!!(sym))
#endif

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define PROTO_TCP 6

// clang may merge the loads of two ctx fields into one wider load through a
// modified pointer, which the verifier refuses ("dereference of modified ctx
// ptr"): a barrier after each ctx read keeps every load on its own.
#define barrier() asm volatile("" ::: "memory")

// pod_config flags.
#define POD_IPV4 1
#define POD_IPV6 2

// in_config flags.
#define IN_INCLUDE 1 // only listed ports are captured (else: listed are excluded)

// Counters (stats, per CPU).
enum {
	STAT_CONNECT_REDIRECTED = 0,
	STAT_CONNECT_EXCLUDED,
	STAT_CONNECT_NO_STORAGE,
	STAT_ORIGDST_PUBLISHED,
	STAT_PEER_RESTORED,
	STAT_CLIENT_REPORTED,
	STAT_INBOUND_STEERED,
	STAT_INBOUND_NO_LISTENER,
	STAT_MAX,
};

// An address: IPv6, or IPv4 mapped into IPv6 (::ffff:a.b.c.d), in network
// byte order.
struct addr {
	__u32 a[4];
};

// Outbound enrolment of one pod, keyed by its netns cookie.
struct pod_config {
	__u16 outbound_port; // host byte order
	__u16 flags;         // POD_IPV4 | POD_IPV6
	__u32 pad;
};

struct port_key {
	__u64 netns;
	__u16 port; // host byte order
	__u16 pad[3];
};

// LPM trie key: prefixlen counts the 64 netns bits, then address bits (IPv4
// as mapped: 96 + prefix).
struct cidr_key {
	__u32 prefixlen;
	__u32 netns[2];
	__u32 addr[4];
};

// Where a connection was going (or, on an agent upstream socket, who the
// client really is).
struct endpoint {
	__u32 addr[4];
	__u16 port;   // network byte order
	__u16 family; // AF_INET or AF_INET6 (of the address, not the socket)
};

// Flags or-ed into an orig_tuples value's family by accel_passive, for the
// agent (capture.go, OrigDstAccel): the agent's accepted socket reached
// PASSIVE_ESTABLISHED here (decided), and went into the accel sockhash
// (accel). Without decided the agent asks the sockhash itself.
#define ORIG_DECIDED 0x4000
#define ORIG_ACCEL 0x8000

// Source of an app's redirected connection as the agent sees its peer.
struct tuple_key {
	__u64 netns;
	__u32 addr[4];
	__u16 port; // host byte order
	__u16 pad[3];
};

// Inbound enrolment of one pod address.
struct in_config {
	__u64 netns; // the pod's netns cookie, so release finds its entries
	__u16 flags; // IN_INCLUDE
	__u16 pad[3];
};

struct in_port_key {
	__u32 addr[4];
	__u16 port; // host byte order
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct pod_config);
} pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct port_key);
	__type(value, __u8);
} out_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct cidr_key);
	__type(value, __u8);
} out_cidrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u64);
	__type(value, __u8);
} agent_cgroups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct endpoint);
} orig_dst SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct tuple_key);
	__type(value, struct endpoint);
} orig_tuples SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct endpoint);
} client_of SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct addr);
	__type(value, struct in_config);
} in_pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct in_port_key);
	__type(value, __u8);
} in_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, struct addr);
	__type(value, __u64);
} in_listeners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

// Kernel-balanced services (services[].dataplane: kernel): the agent
// fills these; an enrolled pod's connect to a service address goes straight
// to one of the service's endpoints. New maps rather than new slots of the
// ones above, so pinned maps of an older agent keep their shape.

// lb_services flags.
#define LB_RANDOM 1 // pick at random (else round robin)

// A service address: v4 mapped, port in host byte order.
struct lb_key {
	__u32 addr[4];
	__u16 port;
	__u16 pad;
};

// What a service address balances over: slots 0..count-1 of its id in
// lb_backends (an endpoint with weight w holds w slots). count 0: no
// endpoint is up, and the connect is refused.
struct lb_service {
	__u32 id;
	__u32 count;
	__u32 flags; // LB_RANDOM
	__u32 rr;    // round-robin position, advanced without a lock (a lost
	             // increment only repeats a slot)
};

struct lb_backend_key {
	__u32 id;
	__u32 slot;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lb_key);
	__type(value, struct lb_service);
} lb_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lb_backend_key);
	__type(value, struct endpoint);
} lb_backends SEC(".maps");

// The service address a kernel-balanced socket dialled, for getpeername.
// Its own storage, not orig_dst: sockops and the acceleration take a
// socket with orig_dst for one bound to the agent's listener.
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct endpoint);
} lb_orig SEC(".maps");

// Counters of kernel balancing (lb_stats, per CPU).
enum {
	LB_CONNECTS = 0, // connects sent straight to an endpoint
	LB_NO_ENDPOINT,  // connects refused: the service had no endpoint up
	LB_NO_STORAGE,   // balanced, but getpeername will show the endpoint
	LB_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_MAX);
	__type(key, __u32);
	__type(value, __u64);
} lb_stats SEC(".maps");

static __always_inline void lb_count(__u32 what)
{
	__u64 *v = bpf_map_lookup_elem(&lb_stats, &what);
	if (v)
		*v += 1;
}

static __always_inline void count(__u32 what)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &what);
	if (v)
		*v += 1;
}

// Acceleration of local pairs (sockops + sk_msg), after Cilium's and
// Merbridge's sockmap redirection. Its maps are new names rather than new
// entries of the maps above: a pinned map of an older agent is re-used only
// when its shape is unchanged.

// Acceleration counters (accel_stats, per CPU). The slots keep their
// indexes across versions (the pinned map's shape is an upgrade contract).
enum {
	ACCEL_SOCKETS = 0,   // sockets put in the accel sockhash
	ACCEL_MSGS,          // sendmsg chunks redirected to the peer
	ACCEL_BYTES,         // bytes of those chunks
	ACCEL_NO_PEER,       // a send found no peer in the sockhash: normal path
	ACCEL_PEER_FULL,     // the peer's sockmap queue held a receive buffer's worth: normal path
	ACCEL_UNREAD,        // the peer had not read all that went through TCP: normal path
	ACCEL_INSERT_FAILED, // the sockhash refused a socket (full)
	ACCEL_MAX,
};

// One end of a local pair: its netns, own and peer address (v4 mapped) and
// ports (host byte order).
struct sock_key {
	__u64 netns;
	__u32 local[4];
	__u32 remote[4];
	__u16 lport;
	__u16 rport;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 131072);
	__type(key, struct sock_key);
	__type(value, __u64);
} accel SEC(".maps");

// Keys of passive sockets to accelerate once they are established: the
// active end of a pair (the only one that can tell it belongs to the agent
// or a captured app) announces its peer here.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct sock_key);
	__type(value, __u8);
} accel_pending SEC(".maps");

// accel_conf[0] is 1 when the agent turned acceleration on.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} accel_conf SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ACCEL_MAX);
	__type(key, __u32);
	__type(value, __u64);
} accel_stats SEC(".maps");

// Acceleration between the agent's upstream socket in a client pod and a
// server's socket in another pod netns on the same node (accel_conf bit
// ACCEL_CONF_NODE). The upstream announces its server socket's key (the
// server netns's cookie and the tuple) with the handshake's sequence
// numbers, which the server socket must match to join; docs/design.md
// says why a pod cannot forge that.

// Counters of same-node pairs (accel_node_stats, per CPU): their own map so
// accel_stats keeps its pinned shape.
enum {
	NODE_SOCKETS = 0, // sockets of same-node pairs put in the sockhash
	NODE_NO_PEER,     // an agent upstream found no same-node SYN for its tuple (a remote server)
	NODE_MAX,
};

// Upstream sockets the agent connected from an enrolled pod (set by the
// connect programs for the agent's own connects; the value is unused).
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u64);
} agent_up SEC(".maps");

// SYNs received by a listener on this node, keyed by the connection as the
// connecting side sees it (netns 0): the value is the receiving netns's
// cookie. An agent upstream socket finds its server's namespace here.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct sock_key);
	__type(value, __u64);
} accel_syns SEC(".maps");

// A same-node passive socket to accelerate: its own key, and the sequence
// numbers it must have at PASSIVE_ESTABLISHED (the next byte it sends and
// the next it expects), which only the real peer of the handshake knows.
struct node_key {
	struct sock_key k;
	__u32 snd_nxt;
	__u32 rcv_nxt;
};

// Announced by the active end; the value is the active end's netns cookie.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct node_key);
	__type(value, __u64);
} accel_node_pending SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NODE_MAX);
	__type(key, __u32);
	__type(value, __u64);
} accel_node_stats SEC(".maps");

// accel_conf[0] bits.
#define ACCEL_CONF_ON 1   // local pairs inside a pod
#define ACCEL_CONF_NODE 2 // agent upstream <-> server in another pod netns on the node

static __always_inline void node_count(__u32 what)
{
	__u64 *v = bpf_map_lookup_elem(&accel_node_stats, &what);
	if (v)
		*v += 1;
}

static __always_inline void accel_count(__u32 what, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&accel_stats, &what);
	if (v)
		*v += n;
}

// port_of turns a context's remote_port (network byte order, which some
// context types also shift into the upper half) into host byte order.
static __always_inline __u16 port_of(__u32 raw)
{
	__u32 p = bpf_ntohl(raw);
	if (p > 0xffff)
		p >>= 16;
	return (__u16)p;
}

static __always_inline void map_v4(__u32 out[4], __u32 ip4)
{
	out[0] = 0;
	out[1] = 0;
	out[2] = bpf_htonl(0x0000ffff);
	out[3] = ip4;
}

static __always_inline int is_mapped(const __u32 a[4])
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0x0000ffff);
}

// never_captured is what the iptables modes leave alone because it stays on
// the pod's loopback: 127.0.0.0/8, ::1 and the unspecified addresses. The
// pod's own addresses are in out_cidrs (redirect enrols them).
static __always_inline int never_captured(const __u32 a[4])
{
	if (is_mapped(a)) {
		__u32 h = bpf_ntohl(a[3]);
		return (h >> 24) == 127 || h == 0;
	}
	if (a[0] == 0 && a[1] == 0 && a[2] == 0)
		return a[3] == 0 || a[3] == bpf_htonl(1);
	return 0;
}

static __always_inline int excluded(__u64 netns, const __u32 a[4], __u16 port)
{
	struct port_key pk = {};
	pk.netns = netns;
	pk.port = port;
	if (bpf_map_lookup_elem(&out_ports, &pk))
		return 1;
	struct cidr_key ck = {};
	ck.prefixlen = 64 + 128;
	__builtin_memcpy(ck.netns, &netns, sizeof(netns));
	ck.addr[0] = a[0];
	ck.addr[1] = a[1];
	ck.addr[2] = a[2];
	ck.addr[3] = a[3];
	return bpf_map_lookup_elem(&out_cidrs, &ck) != 0;
}

static __always_inline __u32 accel_conf_bits(void)
{
	__u32 zero = 0;
	__u32 *on = bpf_map_lookup_elem(&accel_conf, &zero);
	return on ? *on : 0;
}

// enrolled returns the pod's outbound config when the socket's netns is
// enrolled and the caller is not the agent. A connect the agent makes from
// an enrolled netns (an upstream socket) is tagged in agent_up while the
// same-node acceleration is on: the task's cgroup is what tells the agent,
// and a pod cannot enter the agent's cgroup.
static __always_inline struct pod_config *enrolled(struct bpf_sock_addr *ctx, __u64 *netns)
{
	*netns = bpf_get_netns_cookie(ctx);
	struct pod_config *pc = bpf_map_lookup_elem(&pods, netns);
	if (!pc)
		return 0;
	__u64 cg = bpf_get_current_cgroup_id();
	if (bpf_map_lookup_elem(&agent_cgroups, &cg)) {
		if (accel_conf_bits() & ACCEL_CONF_NODE) {
			struct bpf_sock *sk = ctx->sk;
			barrier();
			if (sk)
				bpf_sk_storage_get(&agent_up, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		}
		return 0;
	}
	return pc;
}

// redirect records dst in the socket's storage and reports whether the
// connect may be rewritten. No storage (memory pressure) refuses the
// connect: a captured pod must never reach a destination around the agent.
static __always_inline int record(struct bpf_sock_addr *ctx, const struct endpoint *dst)
{
	struct bpf_sock *sk = ctx->sk;
	barrier();
	if (!sk)
		return 0;
	struct endpoint *st = bpf_sk_storage_get(&orig_dst, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st) {
		count(STAT_CONNECT_NO_STORAGE);
		return 0;
	}
	*st = *dst;
	return 1;
}

// ECONNREFUSED as Linux numbers it.
#define ECONNREFUSED 111

// lb_pick looks dst up among the kernel-balanced services. It returns 0
// when dst is not one; 1 with one of its endpoints in out; -1 when the
// service has no endpoint up.
static __always_inline int lb_pick(const struct endpoint *dst, struct endpoint *out)
{
	struct lb_key k = {};
	k.addr[0] = dst->addr[0];
	k.addr[1] = dst->addr[1];
	k.addr[2] = dst->addr[2];
	k.addr[3] = dst->addr[3];
	k.port = bpf_ntohs(dst->port);
	struct lb_service *s = bpf_map_lookup_elem(&lb_services, &k);
	if (!s)
		return 0;
	__u32 n = s->count;
	if (n == 0)
		return -1;
	__u32 i;
	if (s->flags & LB_RANDOM) {
		i = bpf_get_prandom_u32() % n;
	} else {
		i = s->rr;
		s->rr = i + 1;
		i %= n;
	}
	struct lb_backend_key bk = {};
	bk.id = s->id;
	bk.slot = i;
	struct endpoint *be = bpf_map_lookup_elem(&lb_backends, &bk);
	if (!be) {
		// The agent is shrinking the table (count first, then slots):
		// slot 0 outlives every other.
		bk.slot = 0;
		be = bpf_map_lookup_elem(&lb_backends, &bk);
		if (!be)
			return -1;
	}
	*out = *be;
	return 1;
}

// lb_refuse refuses a connect to a service with no endpoint up, with
// ECONNREFUSED where the kernel lets the program choose (bpf_set_retval,
// Linux 5.18; before, the caller sees EPERM), rather than send it to an
// address nothing serves.
static __always_inline int lb_refuse(void)
{
	lb_count(LB_NO_ENDPOINT);
	if (bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_set_retval))
		bpf_set_retval(-ECONNREFUSED);
	return 0;
}

// lb_keep records the service address on the socket for getpeername.
static __always_inline void lb_keep(struct bpf_sock_addr *ctx, const struct endpoint *dst)
{
	struct bpf_sock *sk = ctx->sk;
	barrier();
	struct endpoint *st = 0;
	if (sk)
		st = bpf_sk_storage_get(&lb_orig, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (st)
		*st = *dst;
	else
		lb_count(LB_NO_STORAGE);
	lb_count(LB_CONNECTS);
}

SEC("cgroup/connect4")
int weir_connect4(struct bpf_sock_addr *ctx)
{
	__u32 type = ctx->type;
	barrier();
	__u32 proto = ctx->protocol;
	barrier();
	if (type != SOCK_STREAM || proto != PROTO_TCP)
		return 1;
	__u64 netns;
	struct pod_config *pc = enrolled(ctx, &netns);
	if (!pc || !(pc->flags & POD_IPV4))
		return 1;
	struct endpoint dst = {};
	__u32 ip = ctx->user_ip4;
	barrier();
	__u32 port = ctx->user_port;
	barrier();
	map_v4(dst.addr, ip);
	dst.port = (__u16)port;
	dst.family = AF_INET;
	struct endpoint be;
	int lb = lb_pick(&dst, &be);
	if (lb < 0)
		return lb_refuse();
	if (lb > 0) {
		lb_keep(ctx, &dst);
		ctx->user_ip4 = be.addr[3];
		barrier();
		ctx->user_port = be.port;
		return 1;
	}
	if (never_captured(dst.addr) || excluded(netns, dst.addr, bpf_ntohs(dst.port))) {
		count(STAT_CONNECT_EXCLUDED);
		return 1;
	}
	if (!record(ctx, &dst))
		return 0;
	ctx->user_ip4 = bpf_htonl(0x7f000001);
	barrier();
	ctx->user_port = bpf_htons(pc->outbound_port);
	count(STAT_CONNECT_REDIRECTED);
	return 1;
}

SEC("cgroup/connect6")
int weir_connect6(struct bpf_sock_addr *ctx)
{
	__u32 type = ctx->type;
	barrier();
	__u32 proto = ctx->protocol;
	barrier();
	if (type != SOCK_STREAM || proto != PROTO_TCP)
		return 1;
	__u64 netns;
	struct pod_config *pc = enrolled(ctx, &netns);
	if (!pc)
		return 1;
	struct endpoint dst = {};
	dst.addr[0] = ctx->user_ip6[0];
	barrier();
	dst.addr[1] = ctx->user_ip6[1];
	barrier();
	dst.addr[2] = ctx->user_ip6[2];
	barrier();
	dst.addr[3] = ctx->user_ip6[3];
	barrier();
	__u32 port = ctx->user_port;
	barrier();
	dst.port = (__u16)port;
	int v4 = is_mapped(dst.addr);
	dst.family = v4 ? AF_INET : AF_INET6;
	if (!(pc->flags & (v4 ? POD_IPV4 : POD_IPV6)))
		return 1;
	// A service address's endpoints have its family (the agent sees to
	// it), kept mapped when the address is IPv4.
	struct endpoint be;
	int lb = lb_pick(&dst, &be);
	if (lb < 0)
		return lb_refuse();
	if (lb > 0) {
		lb_keep(ctx, &dst);
		ctx->user_ip6[0] = be.addr[0];
		barrier();
		ctx->user_ip6[1] = be.addr[1];
		barrier();
		ctx->user_ip6[2] = be.addr[2];
		barrier();
		ctx->user_ip6[3] = be.addr[3];
		barrier();
		ctx->user_port = be.port;
		return 1;
	}
	if (never_captured(dst.addr) || excluded(netns, dst.addr, bpf_ntohs(dst.port))) {
		count(STAT_CONNECT_EXCLUDED);
		return 1;
	}
	if (!record(ctx, &dst))
		return 0;
	// A v4-mapped destination on an IPv6 socket goes to the IPv4 listener.
	ctx->user_ip6[0] = 0;
	barrier();
	ctx->user_ip6[1] = 0;
	barrier();
	ctx->user_ip6[2] = v4 ? bpf_htonl(0x0000ffff) : 0;
	barrier();
	ctx->user_ip6[3] = v4 ? bpf_htonl(0x7f000001) : bpf_htonl(1);
	barrier();
	ctx->user_port = bpf_htons(pc->outbound_port);
	count(STAT_CONNECT_REDIRECTED);
	return 1;
}

// accel_key fills k with the socket's own key.
static __always_inline void accel_key(struct bpf_sock_ops *skops, struct sock_key *k)
{
	k->netns = bpf_get_netns_cookie(skops);
	__u32 family = skops->family;
	barrier();
	if (family == AF_INET) {
		__u32 ip = skops->local_ip4;
		barrier();
		map_v4(k->local, ip);
		ip = skops->remote_ip4;
		barrier();
		map_v4(k->remote, ip);
	} else {
		k->local[0] = skops->local_ip6[0];
		barrier();
		k->local[1] = skops->local_ip6[1];
		barrier();
		k->local[2] = skops->local_ip6[2];
		barrier();
		k->local[3] = skops->local_ip6[3];
		barrier();
		k->remote[0] = skops->remote_ip6[0];
		barrier();
		k->remote[1] = skops->remote_ip6[1];
		barrier();
		k->remote[2] = skops->remote_ip6[2];
		barrier();
		k->remote[3] = skops->remote_ip6[3];
		barrier();
	}
	k->lport = (__u16)skops->local_port;
	barrier();
	__u32 rp = skops->remote_port;
	barrier();
	k->rport = port_of(rp);
}

// reverse_key fills out with the key of k's peer.
static __always_inline void reverse_key(const struct sock_key *k, struct sock_key *out)
{
	out->netns = k->netns;
	__builtin_memcpy(out->local, k->remote, sizeof(out->local));
	__builtin_memcpy(out->remote, k->local, sizeof(out->remote));
	out->lport = k->rport;
	out->rport = k->lport;
}

static __always_inline int accel_on(void)
{
	return accel_conf_bits() & ACCEL_CONF_ON;
}

// accel_insert puts the socket in the accel sockhash under k and reports
// whether it went in.
static __always_inline int accel_insert(struct bpf_sock_ops *skops, struct sock_key *k)
{
	if (bpf_sock_hash_update(skops, &accel, k, BPF_NOEXIST) == 0) {
		accel_count(ACCEL_SOCKETS, 1);
		return 1;
	}
	accel_count(ACCEL_INSERT_FAILED, 1);
	return 0;
}

// Sockets of same-node pairs sit in the accel sockhash under their tuple
// with netns 0: the two ends are in different namespaces, and the kernel
// takes a socket into a sockhash with an sk_msg program only once, so one
// key must serve both its own fallback redirect and its peer's lookup. No
// other socket is ever put under a netns-0 key, and the two ends are
// admitted only as below.

// accel_node_active: the agent's upstream socket, once established, joins
// the sockhash when a listener on this node took its SYN (accel_syns), so
// its server is a socket in a pod netns here, which the sockhash can
// reach. It announces the server socket's own key (that netns's cookie)
// with the sequence numbers the server socket must hold.
static __always_inline void accel_node_active(struct bpf_sock_ops *skops)
{
	struct sock_key k = {};
	accel_key(skops, &k);
	__u64 own_ns = k.netns;
	k.netns = 0;
	__u64 *found = bpf_map_lookup_elem(&accel_syns, &k);
	if (!found) {
		node_count(NODE_NO_PEER);
		return;
	}
	__u64 peer_ns = *found;
	bpf_map_delete_elem(&accel_syns, &k);
	struct node_key pk = {};
	reverse_key(&k, &pk.k);
	pk.k.netns = peer_ns;
	__u32 snd = skops->snd_nxt;
	barrier();
	__u32 rcv = skops->rcv_nxt;
	barrier();
	pk.snd_nxt = rcv;
	pk.rcv_nxt = snd;
	if (bpf_map_update_elem(&accel_node_pending, &pk, &own_ns, BPF_ANY))
		return;
	if (bpf_sock_hash_update(skops, &accel, &k, BPF_NOEXIST)) {
		accel_count(ACCEL_INSERT_FAILED, 1);
		return;
	}
	accel_count(ACCEL_SOCKETS, 1);
	node_count(NODE_SOCKETS);
}

// accel_node_passive: an accepted socket an agent upstream socket
// announced joins, if its sequence numbers are the ones the upstream saw
// in the handshake.
static __always_inline void accel_node_passive(struct bpf_sock_ops *skops, struct sock_key *k)
{
	struct node_key pk = {};
	pk.k = *k;
	pk.snd_nxt = skops->snd_nxt;
	barrier();
	pk.rcv_nxt = skops->rcv_nxt;
	barrier();
	if (!bpf_map_lookup_elem(&accel_node_pending, &pk))
		return;
	bpf_map_delete_elem(&accel_node_pending, &pk);
	struct sock_key nk = *k;
	nk.netns = 0;
	if (bpf_sock_hash_update(skops, &accel, &nk, BPF_NOEXIST)) {
		accel_count(ACCEL_INSERT_FAILED, 1);
		return;
	}
	accel_count(ACCEL_SOCKETS, 1);
	node_count(NODE_SOCKETS);
}

// accel_node_syn: a listener on this node took a SYN (the request socket's
// first sockops call): remember which netns took it, under the key the
// connecting socket computes for itself with netns 0.
static __always_inline void accel_node_syn(struct bpf_sock_ops *skops)
{
	__u32 full = skops->is_fullsock;
	barrier();
	if (full || !(accel_conf_bits() & ACCEL_CONF_NODE))
		return;
	struct sock_key k = {};
	accel_key(skops, &k);
	// A SYN from loopback (an app to the agent's outbound listener, or
	// any pod's own loopback traffic) never comes from an agent upstream
	// socket: the connect programs never capture loopback destinations.
	// Recording it would cost an update per connection and fill the LRU
	// with entries nobody deletes.
	if (never_captured(k.remote))
		return;
	struct sock_key syn = {};
	reverse_key(&k, &syn);
	syn.netns = 0;
	bpf_map_update_elem(&accel_syns, &syn, &k.netns, BPF_ANY);
}

// accel_active: a captured app's socket to the agent's outbound listener
// (it carries orig_dst) or the agent's upstream socket to an app (it
// carries client_of) joins the sockhash and announces its peer. Both ends
// are in one netns: the pair never leaves the pod.
static __always_inline void accel_active(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	barrier();
	if (!sk || !accel_on())
		return;
	if (!bpf_sk_storage_get(&orig_dst, sk, 0, 0) && !bpf_sk_storage_get(&client_of, sk, 0, 0)) {
		if ((accel_conf_bits() & ACCEL_CONF_NODE) && bpf_sk_storage_get(&agent_up, sk, 0, 0))
			accel_node_active(skops);
		return;
	}
	struct sock_key k = {};
	accel_key(skops, &k);
	struct sock_key peer = {};
	reverse_key(&k, &peer);
	__u8 one = 1;
	bpf_map_update_elem(&accel_pending, &peer, &one, BPF_ANY);
	accel_insert(skops, &k);
}

// accel_passive: an accepted socket whose active end announced it joins.
static __always_inline void accel_passive(struct bpf_sock_ops *skops)
{
	struct sock_key k = {};
	accel_key(skops, &k);
	if (!bpf_map_lookup_elem(&accel_pending, &k)) {
		if (accel_conf_bits() & ACCEL_CONF_NODE)
			accel_node_passive(skops, &k);
		return;
	}
	bpf_map_delete_elem(&accel_pending, &k);
	int in = accel_insert(skops, &k);
	// An agent's accepted outbound socket: its peer (the app's socket)
	// published the original destination under the peer's own source,
	// which the agent reads right after accept. Say there whether this
	// socket went in, so that read also answers the relay's question
	// (Engine.Accelerated) without two more system calls.
	struct tuple_key t = {};
	t.netns = k.netns;
	__builtin_memcpy(t.addr, k.remote, sizeof(t.addr));
	t.port = k.rport;
	struct endpoint *ep = bpf_map_lookup_elem(&orig_tuples, &t);
	if (ep)
		ep->family |= in ? ORIG_DECIDED | ORIG_ACCEL : ORIG_DECIDED;
}

SEC("sockops")
int weir_sockops(struct bpf_sock_ops *skops)
{
	__u32 op = skops->op;
	barrier();
	if (op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB) {
		accel_active(skops);
		return 1;
	}
	if (op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) {
		accel_passive(skops);
		return 1;
	}
	if (op == BPF_SOCK_OPS_TIMEOUT_INIT) {
		// reply stays 0: the kernel's default timeout.
		accel_node_syn(skops);
		return 1;
	}
	if (op != BPF_SOCK_OPS_TCP_CONNECT_CB)
		return 1;
	struct bpf_sock *sk = skops->sk;
	barrier();
	if (!sk)
		return 1;
	struct endpoint *dst = bpf_sk_storage_get(&orig_dst, sk, 0, 0);
	if (!dst)
		return 1;
	struct tuple_key k = {};
	k.netns = bpf_get_netns_cookie(skops);
	__u32 family = skops->family;
	barrier();
	if (family == AF_INET) {
		__u32 ip = skops->local_ip4;
		barrier();
		map_v4(k.addr, ip);
	} else {
		k.addr[0] = skops->local_ip6[0];
		barrier();
		k.addr[1] = skops->local_ip6[1];
		barrier();
		k.addr[2] = skops->local_ip6[2];
		barrier();
		k.addr[3] = skops->local_ip6[3];
		barrier();
	}
	k.port = (__u16)skops->local_port;
	barrier();
	if (bpf_map_update_elem(&orig_tuples, &k, dst, BPF_ANY) == 0)
		count(STAT_ORIGDST_PUBLISHED);
	return 1;
}

// is_agent reports whether the calling task is the agent (its cgroup is
// exempt from capture). The agent's own getpeername (Go asks once per
// dial) needs nothing restored: it skips client_for's socket lookup.
static __always_inline int is_agent(void)
{
	__u64 cg = bpf_get_current_cgroup_id();
	return bpf_map_lookup_elem(&agent_cgroups, &cg) != 0;
}

// client_for finds the socket at the other end of an app's accepted socket
// (an agent upstream socket in the same netns) and returns the client the
// agent tagged it with, copied into out.
static __always_inline int client_for(struct bpf_sock_addr *ctx, struct bpf_sock_tuple *t, __u32 tlen, struct endpoint *out)
{
	struct bpf_sock *peer = bpf_sk_lookup_tcp(ctx, t, tlen, BPF_F_CURRENT_NETNS, 0);
	if (!peer)
		return 0;
	struct endpoint *cl = bpf_sk_storage_get(&client_of, peer, 0, 0);
	int found = 0;
	if (cl) {
		*out = *cl;
		found = 1;
	}
	bpf_sk_release(peer);
	return found;
}

SEC("cgroup/getpeername4")
int weir_getpeername4(struct bpf_sock_addr *ctx)
{
	__u64 netns = bpf_get_netns_cookie(ctx);
	if (!bpf_map_lookup_elem(&pods, &netns))
		return 1;
	struct bpf_sock *sk = ctx->sk;
	barrier();
	if (!sk)
		return 1;
	struct endpoint *dst = bpf_sk_storage_get(&orig_dst, sk, 0, 0);
	if (!dst)
		dst = bpf_sk_storage_get(&lb_orig, sk, 0, 0);
	if (dst) {
		if (dst->family != AF_INET)
			return 1;
		ctx->user_ip4 = dst->addr[3];
		barrier();
		ctx->user_port = dst->port;
		count(STAT_PEER_RESTORED);
		return 1;
	}
	if (is_agent())
		return 1;
	struct bpf_sock_tuple t = {};
	t.ipv4.saddr = sk->src_ip4;
	barrier();
	t.ipv4.sport = bpf_htons((__u16)sk->src_port);
	barrier();
	t.ipv4.daddr = ctx->user_ip4;
	barrier();
	t.ipv4.dport = (__u16)ctx->user_port;
	barrier();
	struct endpoint cl = {};
	if (!client_for(ctx, &t, sizeof(t.ipv4), &cl) || cl.family != AF_INET)
		return 1;
	ctx->user_ip4 = cl.addr[3];
	barrier();
	ctx->user_port = cl.port;
	count(STAT_CLIENT_REPORTED);
	return 1;
}

SEC("cgroup/getpeername6")
int weir_getpeername6(struct bpf_sock_addr *ctx)
{
	__u64 netns = bpf_get_netns_cookie(ctx);
	if (!bpf_map_lookup_elem(&pods, &netns))
		return 1;
	struct bpf_sock *sk = ctx->sk;
	barrier();
	if (!sk)
		return 1;
	struct endpoint *dst = bpf_sk_storage_get(&orig_dst, sk, 0, 0);
	if (!dst)
		dst = bpf_sk_storage_get(&lb_orig, sk, 0, 0);
	struct endpoint out = {};
	if (dst) {
		out = *dst;
		count(STAT_PEER_RESTORED);
	} else {
		if (is_agent())
			return 1;
		__u32 peer[4];
		peer[0] = ctx->user_ip6[0];
		barrier();
		peer[1] = ctx->user_ip6[1];
		barrier();
		peer[2] = ctx->user_ip6[2];
		barrier();
		peer[3] = ctx->user_ip6[3];
		barrier();
		__u32 pport = ctx->user_port;
		barrier();
		struct bpf_sock_tuple t = {};
		__u32 tlen;
		if (is_mapped(peer)) {
			t.ipv4.saddr = sk->src_ip4;
			barrier();
			t.ipv4.sport = bpf_htons((__u16)sk->src_port);
			barrier();
			t.ipv4.daddr = peer[3];
			t.ipv4.dport = (__u16)pport;
			tlen = sizeof(t.ipv4);
		} else {
			t.ipv6.saddr[0] = sk->src_ip6[0];
			barrier();
			t.ipv6.saddr[1] = sk->src_ip6[1];
			barrier();
			t.ipv6.saddr[2] = sk->src_ip6[2];
			barrier();
			t.ipv6.saddr[3] = sk->src_ip6[3];
			barrier();
			t.ipv6.sport = bpf_htons((__u16)sk->src_port);
			barrier();
			t.ipv6.daddr[0] = peer[0];
			t.ipv6.daddr[1] = peer[1];
			t.ipv6.daddr[2] = peer[2];
			t.ipv6.daddr[3] = peer[3];
			t.ipv6.dport = (__u16)pport;
			tlen = sizeof(t.ipv6);
		}
		if (!client_for(ctx, &t, tlen, &out))
			return 1;
		count(STAT_CLIENT_REPORTED);
	}
	if (out.family == AF_INET)
		map_v4(out.addr, out.addr[3]);
	ctx->user_ip6[0] = out.addr[0];
	barrier();
	ctx->user_ip6[1] = out.addr[1];
	barrier();
	ctx->user_ip6[2] = out.addr[2];
	barrier();
	ctx->user_ip6[3] = out.addr[3];
	barrier();
	ctx->user_port = out.port;
	return 1;
}

SEC("sk_lookup")
int weir_sk_lookup(struct bpf_sk_lookup *ctx)
{
	__u32 proto = ctx->protocol;
	barrier();
	if (proto != PROTO_TCP)
		return SK_PASS;
	struct addr local = {}, remote = {};
	__u32 family = ctx->family;
	barrier();
	if (family == AF_INET) {
		__u32 ip = ctx->local_ip4;
		barrier();
		map_v4(local.a, ip);
		ip = ctx->remote_ip4;
		barrier();
		map_v4(remote.a, ip);
	} else {
		local.a[0] = ctx->local_ip6[0];
		barrier();
		local.a[1] = ctx->local_ip6[1];
		barrier();
		local.a[2] = ctx->local_ip6[2];
		barrier();
		local.a[3] = ctx->local_ip6[3];
		barrier();
		remote.a[0] = ctx->remote_ip6[0];
		barrier();
		remote.a[1] = ctx->remote_ip6[1];
		barrier();
		remote.a[2] = ctx->remote_ip6[2];
		barrier();
		remote.a[3] = ctx->remote_ip6[3];
		barrier();
	}
	struct in_config *ic = bpf_map_lookup_elem(&in_pods, &local);
	if (!ic)
		return SK_PASS;
	// What the pod sends itself (the app to its own address, the agent
	// to the app) is never captured, as iptables leaves what arrives on
	// loopback alone. ingress_ifindex cannot tell: locally delivered
	// packets report the device that holds the address, not lo.
	if (never_captured(remote.a))
		return SK_PASS;
	struct in_config *rc = bpf_map_lookup_elem(&in_pods, &remote);
	if (rc && rc->netns == ic->netns)
		return SK_PASS;
	struct in_port_key pk = {};
	__builtin_memcpy(pk.addr, local.a, sizeof(pk.addr));
	pk.port = (__u16)ctx->local_port;
	barrier();
	int listed = bpf_map_lookup_elem(&in_ports, &pk) != 0;
	if ((ic->flags & IN_INCLUDE) ? !listed : listed)
		return SK_PASS;
	struct bpf_sock *sk = bpf_map_lookup_elem(&in_listeners, &local);
	if (!sk) {
		// Enrolled but the agent holds no listener (it is restarting):
		// drop the SYN, which the client sends again, rather than let the
		// connection reach the app around the agent.
		count(STAT_INBOUND_NO_LISTENER);
		return SK_DROP;
	}
	long err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return SK_DROP;
	count(STAT_INBOUND_STEERED);
	return SK_PASS;
}

// What weir_sk_msg reads of the kernel's own structures, relocated by CO-RE
// against the running kernel's BTF (only the fields named here must
// exist, wherever they sit). The ___weir suffix keeps these local.
struct sock___weir {
	int sk_rcvbuf;
	void *sk_user_data;
} __attribute__((preserve_access_index));

struct tcp_sock___weir {
	__u32 copied_seq; // the next byte the reader will consume
	__u32 write_seq;  // the next byte the writer will queue
} __attribute__((preserve_access_index));

struct sk_psock___weir {
	__u32 msg_tot_len; // bytes in the sockmap queue
} __attribute__((preserve_access_index));

struct sk_msg___weir {
	struct sock___weir *sk;
	struct sock___weir *sk_redir;
} __attribute__((preserve_access_index));

// bpf_rdonly_cast (Linux 6.2) turns a kernel pointer into a read-only typed
// one. Weak: on a kernel without it the program still loads, and
// weir_sk_msg never redirects (the agent refuses the setting first: see
// AccelSupport).
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;

// sk_user_data holds the psock with flag bits in its low three bits
// (SK_USER_DATA_NOCOPY, _BPF, _PSOCK).
#define SK_USER_DATA_PTRMASK (~7UL)

// peer_ready says whether the peer a redirect has just picked (msg's
// sk_redir) may take size more bytes from this socket through its sockmap
// queue:
//   - order: everything this socket sent through TCP has been read by the
//     peer (its copied_seq is this socket's write_seq). Redirected bytes
//     take no sequence numbers, and the peer's recvmsg drains the sockmap
//     queue before its TCP queue, so redirecting while TCP bytes are unread
//     would hand the peer's reader newer bytes first;
//   - flow control: the sockmap queue holds less than the peer's receive
//     buffer. The kernel charges that queue to the peer without any limit
//     but the machine's TCP memory, so without this a fast sender and a
//     slow reader fill the node's TCP memory, and every TCP socket on it
//     starts losing packets (the cause of the connection-per-request
//     timeouts seen when a bulk transfer had just run). Beyond that, the
//     normal path's window holds the sender back.
// It returns 0 when ready, else the counter that says why not.
static __always_inline __u32 peer_ready(struct sk_msg_md *msg, __u32 size)
{
	if (!bpf_ksym_exists(bpf_rdonly_cast) || !bpf_core_field_exists(struct sk_psock___weir, msg_tot_len))
		return ACCEL_NO_PEER;
	struct sk_msg___weir *m = bpf_rdonly_cast(msg, bpf_core_type_id_kernel(struct sk_msg___weir));
	struct sock___weir *peer = m->sk_redir;
	struct tcp_sock___weir *self = bpf_rdonly_cast(m->sk, bpf_core_type_id_kernel(struct tcp_sock___weir));
	struct tcp_sock___weir *ptp = bpf_rdonly_cast(peer, bpf_core_type_id_kernel(struct tcp_sock___weir));
	if (!peer || !self || ptp->copied_seq != self->write_seq)
		return ACCEL_UNREAD;
	unsigned long ud = (unsigned long)peer->sk_user_data & SK_USER_DATA_PTRMASK;
	struct sk_psock___weir *ps = bpf_rdonly_cast((void *)ud, bpf_core_type_id_kernel(struct sk_psock___weir));
	if (!ps)
		return ACCEL_NO_PEER;
	__u32 queued = ps->msg_tot_len;
	int rcvbuf = peer->sk_rcvbuf;
	if (queued > 0 && (__s64)queued + size > (__s64)rcvbuf)
		return ACCEL_PEER_FULL;
	return 0;
}

// weir_sk_msg runs on every sendmsg chunk of a socket in the accel
// sockhash: the data goes straight into the peer socket's receive queue
// (BPF_F_INGRESS) when the peer is there and ready for it (peer_ready),
// and through the socket's own TCP path otherwise. The peer is only known
// once bpf_msg_redirect_hash has picked it; taking the normal path after
// that is a second redirect, to this socket's own egress, which is what
// SK_PASS does. msg_redirect_hash alone drops the data when the peer is
// missing, so a failed lookup always ends in SK_PASS, and nothing here
// ever drops data.
SEC("sk_msg")
int weir_sk_msg(struct sk_msg_md *msg)
{
	struct sock_key peer = {};
	peer.netns = bpf_get_netns_cookie(msg);
	__u32 family = msg->family;
	barrier();
	if (family == AF_INET) {
		__u32 ip = msg->remote_ip4;
		barrier();
		map_v4(peer.local, ip);
		ip = msg->local_ip4;
		barrier();
		map_v4(peer.remote, ip);
	} else {
		peer.local[0] = msg->remote_ip6[0];
		barrier();
		peer.local[1] = msg->remote_ip6[1];
		barrier();
		peer.local[2] = msg->remote_ip6[2];
		barrier();
		peer.local[3] = msg->remote_ip6[3];
		barrier();
		peer.remote[0] = msg->local_ip6[0];
		barrier();
		peer.remote[1] = msg->local_ip6[1];
		barrier();
		peer.remote[2] = msg->local_ip6[2];
		barrier();
		peer.remote[3] = msg->local_ip6[3];
		barrier();
	}
	__u32 rp = msg->remote_port;
	barrier();
	peer.lport = port_of(rp);
	peer.rport = (__u16)msg->local_port;
	barrier();
	__u32 size = msg->size;
	barrier();
	if (bpf_msg_redirect_hash(msg, &accel, &peer, BPF_F_INGRESS) != SK_PASS) {
		// A same-node pair's peer is under netns 0 (accel_node_active).
		peer.netns = 0;
		if (bpf_msg_redirect_hash(msg, &accel, &peer, BPF_F_INGRESS) != SK_PASS) {
			accel_count(ACCEL_NO_PEER, 1);
			return SK_PASS;
		}
	}
	__u32 why = peer_ready(msg, size);
	if (!why) {
		accel_count(ACCEL_MSGS, 1);
		accel_count(ACCEL_BYTES, size);
		return SK_PASS;
	}
	struct sock_key self = {};
	reverse_key(&peer, &self);
	if (bpf_msg_redirect_hash(msg, &accel, &self, 0) != SK_PASS) {
		// Cannot happen: a socket sends with its lock held, and only its
		// close takes it out of the sockhash. Dropping (the sender sees
		// an error) is still better than handing the peer bytes out of
		// order or past its buffer.
		accel_count(ACCEL_INSERT_FAILED, 1);
		return SK_DROP;
	}
	accel_count(why, 1);
	return SK_PASS;
}

char __license[] SEC("license") = "Dual MIT/GPL";
