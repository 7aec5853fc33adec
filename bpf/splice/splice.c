//go:build ignore

// weir's in-kernel splice of an L4 relay's two sockets (splice.go explains
// the design). One program, an sk_skb verdict attached to the splice
// sockhash: every skb one socket of a pair receives goes straight to the
// other socket's send path, so the relay's bytes never reach user space,
// while the peer has room for them (peer_has_room). The first time it has
// not, that direction falls back to user space for good (SK_PASS): the
// bytes wait in the socket's own queue, the TCP window closes until the
// agent reads them, and the sender is held back as on the normal path.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

// bpf_ksym_exists came with libbpf 1.2; Debian 12 has 1.1.
#ifndef bpf_ksym_exists
#define bpf_ksym_exists(sym) (!!(sym))
#endif

// Counters (splice_stats, per CPU).
enum {
	SPLICE_SKBS = 0,  // skbs redirected to the peer's send path
	SPLICE_BYTES,     // their bytes
	SPLICE_NO_PEER,   // a socket with no peer entry, or a peer gone: user space
	SPLICE_FELL_BACK, // a direction fell back to user space (peer full)
	SPLICE_PASSED,    // bytes handed to user space after a fallback
	SPLICE_TRIMMED,   // bytes of retransmitted skbs already handled, cut off
	SPLICE_TRIM_FAILED, // skbs whose repeated head could not be cut off
	SPLICE_MAX,
};

// The most skbs a peer's redirect backlog may hold before a direction
// falls back: the kernel bounds that queue by nothing (sk_psock_skb_redirect
// appends, and the source's TCP window has already reopened), so this and
// the peer's send buffer are the whole flow control of the spliced path.
#define BACKLOG_MAX 16

// One direction of a spliced pair, keyed by the receiving socket's cookie.
struct peer {
	__u64 cookie;     // the other socket's cookie, its key in splice
	__u64 redirected; // bytes this direction redirected, for the drain check
	__u32 fallen;     // 1: this direction goes through user space for good
	__u32 next_seq;   // sequence number after the last byte handled
	__u32 seq_known;  // 1: next_seq is set
	__u32 broken;     // 1: a repeated head could not be cut; the relay resets the pair
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u64);
} splice SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct peer);
} splice_peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SPLICE_MAX);
	__type(key, __u32);
	__type(value, __u64);
} splice_stats SEC(".maps");

static __always_inline void count(__u32 what, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&splice_stats, &what);
	if (v)
		*v += n;
}

// What peer_has_room reads of the kernel's structures, relocated by CO-RE
// (the ___weir suffix keeps these local).
struct sock_common___weir {
	volatile unsigned char skc_state;
} __attribute__((preserve_access_index));

struct sock___weir {
	struct sock_common___weir __sk_common;
	int sk_sndbuf;
	int sk_wmem_queued;
	void *sk_user_data;
} __attribute__((preserve_access_index));

struct sk_buff_head___weir {
	__u32 qlen;
} __attribute__((preserve_access_index));

struct sk_psock___weir {
	struct sk_buff_head___weir ingress_skb; // the redirect backlog
} __attribute__((preserve_access_index));

struct sk_buff___weir {
	struct sock___weir *sk;
	char cb[48]; // struct tcp_skb_cb: seq first
} __attribute__((preserve_access_index));

struct tcp_sock___weir {
	__u32 copied_seq;
} __attribute__((preserve_access_index));

extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;

// skb_seq is TCP_SKB_CB(skb)->seq, the sequence number of the skb's first
// byte, read a byte at a time (a char array takes no wider load).
static __always_inline __u32 skb_seq(struct sk_buff___weir *k)
{
	__u8 b0 = k->cb[0], b1 = k->cb[1], b2 = k->cb[2], b3 = k->cb[3];
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	return (__u32)b0 | (__u32)b1 << 8 | (__u32)b2 << 16 | (__u32)b3 << 24;
#else
	return (__u32)b3 | (__u32)b2 << 8 | (__u32)b1 << 16 | (__u32)b0 << 24;
#endif
}

// TRIM_FAILED is trim_seen's answer for an skb it could not cut.
#define TRIM_FAILED 0xffffffffu

// trim_seen cuts off the head of an skb that repeats bytes this socket
// handled already and returns the length left. TCP queues a retransmitted
// segment that overlaps what was received untrimmed (a reader skips the
// overlap by its copied_seq), but the verdict is handed whole skbs: left
// alone, the overlap would be sent to the peer twice. Bytes a reader took
// before the splice (a sniff that read part of an skb) are cut the same
// way: the program's first skb is measured against copied_seq.
static __always_inline __u32 trim_seen(struct __sk_buff *skb, struct peer *p, __u32 len)
{
	struct sk_buff___weir *k = bpf_rdonly_cast(skb, bpf_core_type_id_kernel(struct sk_buff___weir));
	if (!k)
		return len;
	__u32 seq = skb_seq(k);
	__u32 next = p->next_seq;
	if (!p->seq_known) {
		struct tcp_sock___weir *tp = bpf_rdonly_cast(k->sk, bpf_core_type_id_kernel(struct tcp_sock___weir));
		if (!tp)
			return len;
		next = tp->copied_seq;
		p->seq_known = 1;
	}
	p->next_seq = seq + len;
	__s32 seen = (__s32)(next - seq);
	if (seen <= 0)
		return len;
	if ((__u32)seen > len)
		seen = len;
	// bpf_skb_adjust_room pulls at most 0xfff bytes a call. An skb in the
	// receive queue is not bounded by 64 KiB: TCP coalesces the segments
	// that follow onto it (262 KB seen), retransmitted ones included, so
	// a repeated head can be longer than one segment (with a bound of 17
	// calls, cuts stopped at 69,615 bytes and reset the pair). 256 calls
	// cut up to about 1 MiB. Each call that reaches into the skb's pages
	// reallocates its head (the bytes cut before stay in its headroom),
	// so a long overlap would take one allocation per 4 KiB, each larger
	// and copying the last; pulling the whole overlap into the head first
	// takes one. If that fails, the calls below try their own way.
	if ((__u32)seen > 0xfff)
		bpf_skb_pull_data(skb, (__u32)seen);
	__u32 cut = 0;
	for (int i = 0; i < 256 && cut < (__u32)seen; i++) {
		__u32 n = (__u32)seen - cut;
		if (n > 0xfff)
			n = 0xfff;
		if (bpf_skb_adjust_room(skb, -(__s32)n, 0, 0))
			break;
		cut += n;
	}
	count(SPLICE_TRIMMED, cut);
	if (cut < (__u32)seen) {
		count(SPLICE_TRIM_FAILED, 1);
		return TRIM_FAILED;
	}
	return len - cut;
}

// sk_user_data holds the psock with flag bits in its low three bits.
#define SK_USER_DATA_PTRMASK (~7UL)

#define TCP_ESTABLISHED 1
#define TCP_CLOSE_WAIT 8

// peer_has_room says whether the peer socket may take more redirected
// bytes: it can still send (a reset socket stays in the sockhash until the
// agent closes it, and the kernel drops what is redirected to it), its
// send buffer is not full and its redirect backlog holds fewer than
// BACKLOG_MAX skbs.
static __always_inline int peer_has_room(struct bpf_sock *sk)
{
	if (!bpf_ksym_exists(bpf_rdonly_cast) || !bpf_core_field_exists(struct sk_psock___weir, ingress_skb))
		return 0;
	struct sock___weir *s = bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct sock___weir));
	if (!s)
		return 0;
	unsigned char state = s->__sk_common.skc_state;
	if (state != TCP_ESTABLISHED && state != TCP_CLOSE_WAIT)
		return 0;
	if (s->sk_wmem_queued >= s->sk_sndbuf)
		return 0;
	unsigned long ud = (unsigned long)s->sk_user_data & SK_USER_DATA_PTRMASK;
	struct sk_psock___weir *ps = bpf_rdonly_cast((void *)ud, bpf_core_type_id_kernel(struct sk_psock___weir));
	if (!ps)
		return 0;
	return ps->ingress_skb.qlen < BACKLOG_MAX;
}

SEC("sk_skb/verdict")
int weir_splice(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	__u32 len = skb->len;
	// A FIN with no data reaches the program as an empty skb. Its work is
	// done (TCP marked the socket shut for reading, and the relay's read
	// returns EOF); redirected, the peer's backlog would take the empty
	// send for a broken pipe and fail the peer with EPIPE.
	if (len == 0)
		return SK_DROP;
	struct peer *p = bpf_map_lookup_elem(&splice_peers, &cookie);
	if (!p) {
		count(SPLICE_NO_PEER, 1);
		return SK_PASS;
	}
	if (bpf_ksym_exists(bpf_rdonly_cast)) {
		if (p->broken)
			return SK_DROP; // the relay is resetting the pair
		len = trim_seen(skb, p, len);
		if (len == 0)
			return SK_DROP; // all of it handled already
		if (len == TRIM_FAILED) {
			// Could not cut it all (the kernel had no memory to pull
			// the repeated bytes out of the skb's pages). Passed on,
			// they would arrive twice; dropped, the bytes after them
			// would be missing. Neither may happen: the relay sees
			// broken and resets both connections, which have
			// delivered an exact prefix of their streams.
			p->broken = 1;
			return SK_DROP;
		}
	}
	if (p->fallen) {
		count(SPLICE_PASSED, len);
		return SK_PASS;
	}
	__u64 peer = p->cookie;
	struct bpf_sock *sk = bpf_map_lookup_elem(&splice, &peer);
	if (!sk) {
		// The peer closed (its close takes it out of the sockhash): the
		// agent reads these bytes and finds the error writing them.
		p->fallen = 1;
		count(SPLICE_NO_PEER, 1);
		count(SPLICE_PASSED, len);
		return SK_PASS;
	}
	int room = peer_has_room(sk);
	bpf_sk_release(sk);
	if (!room) {
		p->fallen = 1;
		count(SPLICE_FELL_BACK, 1);
		count(SPLICE_PASSED, len);
		return SK_PASS;
	}
	// Counted before the redirect: the drain check must never see the
	// peer's sent bytes ahead of this count.
	__sync_fetch_and_add(&p->redirected, len);
	long v = bpf_sk_redirect_hash(skb, &splice, &peer, 0);
	if (v != SK_PASS) {
		// Gone between the lookup and now: nothing was redirected.
		__sync_fetch_and_add(&p->redirected, -(__u64)len);
		p->fallen = 1;
		count(SPLICE_NO_PEER, 1);
		count(SPLICE_PASSED, len);
		return SK_PASS;
	}
	count(SPLICE_SKBS, 1);
	count(SPLICE_BYTES, len);
	return SK_PASS;
}

char __license[] SEC("license") = "Dual MIT/GPL";
