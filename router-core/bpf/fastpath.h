/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * The ABI between Pronto's tc programs (router_fast.c, host_decap.c) and their
 * loader (router-core/src/linux/fastpath/). The Rust side mirrors every struct
 * and the counter list below; a unit test there reads this file and fails if
 * the two disagree.
 *
 * Byte order: addresses and ports are stored as they appear on the wire.
 */
#ifndef PRONTO_FASTPATH_H
#define PRONTO_FASTPATH_H

#include <linux/types.h>

/* Bumped on any change of a struct or of the counter list. */
#define FP_ABI_VERSION 3

/* A pinned IPv4 flow's 5-tuple, client side (the only side an SLR sees). */
struct fp_key_v4 {
	__u8 src[4];
	__u8 dst[4];
	__u8 sport[2];
	__u8 dport[2];
	__u8 proto;
	__u8 pad[3];
};

/* A pinned IPv6 flow's 5-tuple. */
struct fp_key_v6 {
	__u8 src[16];
	__u8 dst[16];
	__u8 sport[2];
	__u8 dport[2];
	__u8 proto;
	__u8 pad[3];
};

/* fp_flow.seen: what the program saw of a TCP flow since the entry was written. */
#define FP_SEEN_ESTABLISHED 0x01 /* a segment without SYN: the handshake is done */
#define FP_SEEN_CLOSING 0x02	 /* FIN or RST */

/* Where a pinned flow goes: written by userspace, `seen` and `last_seen_ns`
 * updated by the program on every packet it forwards. */
struct fp_flow {
	__u8 next_hop[16]; /* IPv4: the first 4 bytes */
	__u8 local[16];	   /* outer source, same family as next_hop */
	__u8 family;	   /* 4 or 6: of next_hop and local */
	__u8 seen;	   /* FP_SEEN_* */
	__u8 pad[6];
	__u64 last_seen_ns; /* bpf_ktime_get_ns() of the last packet forwarded */
	__u64 packets;	    /* forwarded by the program */
	__u64 bytes;	    /* forwarded by the program (without the outer header) */
};

/* A change of what the program saw of a TCP flow (fp_flow.seen), sent to
 * userspace through the `events` ring buffer so the engine's TCP state (and
 * with it eviction and timeouts) follows connections it no longer sees. At
 * most a few per connection: established, closing, a reused port. */
struct fp_event {
	__u8 family; /* of the key: 4 (struct fp_key_v4 in key[0..16]) or 6 */
	__u8 seen;   /* FP_SEEN_* now */
	__u8 pad[6];
	__u64 at_ns; /* bpf_ktime_get_ns() */
	__u8 key[40];
};

/* The router's parameters: one entry, written before the program is attached. */
struct fp_config {
	__u8 local_v4[4];  /* tunnel endpoint (tunnels to it are terminated) */
	__u8 local_v6[16];
	__u8 has_v4;
	__u8 has_v6;
	__u8 tunnel_ttl;   /* outer TTL / hop limit */
	__u8 admit_any;	   /* 1: tunnels from any source; 0: only tunnel_src_v4/v6 */
	__u16 tunnel_mtu;  /* path MTU toward next hops, outer header included */
	__u16 pad;
};

/* LPM keys of the admitted tunnel sources and the served subnets. */
struct fp_prefix_v4 {
	__u32 prefixlen;
	__u8 addr[4];
};

struct fp_prefix_v6 {
	__u32 prefixlen;
	__u8 addr[16];
};

/* Per-CPU counters, one per verdict: FP_FWD_* forwarded by the program,
 * FP_PASS_* handed on to the stack (and from there to the engine), FP_DROP_*
 * dropped by the program, FP_HOST_* the host program's. */
enum fp_counter {
	FP_FWD_ENCAP = 0,	/* plain packet encapsulated and redirected */
	FP_FWD_RETUNNEL,	/* tunnel to us re-addressed to the next hop */
	FP_FWD_BYTES,		/* bytes of the packets forwarded (inner) */
	FP_PASS_NOT_IP,		/* not IPv4/IPv6 over Ethernet */
	FP_PASS_MALFORMED,	/* truncated, inconsistent lengths */
	FP_PASS_FRAGMENT,	/* a fragment */
	FP_PASS_OPTIONS,	/* IPv4 options or IPv6 extension headers */
	FP_PASS_PROTO,		/* neither TCP nor UDP (ICMP, ...) */
	FP_PASS_LOCAL,		/* addressed to us, not a tunnel */
	FP_PASS_TUNNEL_OTHER,	/* a tunnel not addressed to us */
	FP_PASS_TUNNEL_SOURCE,	/* a tunnel to us from a source not admitted */
	FP_PASS_MISS,		/* no pinned flow */
	FP_PASS_TTL,		/* TTL would expire: the engine answers */
	FP_PASS_TOO_BIG,	/* over the tunnel MTU: the engine fragments or answers */
	FP_PASS_NO_ROUTE,	/* no usable route or neighbour to the next hop */
	FP_PASS_ECN,		/* an ECN combination the engine must settle */
	FP_PASS_FAMILY,		/* the next hop's family differs from the outer header's */
	FP_PASS_REUSE,		/* a SYN on a closed flow's ports: the engine places it anew */
	FP_PASS_HELPER,		/* a helper refused before the packet was changed */
	FP_DROP_ERROR,		/* a helper failed after the packet was changed */
	FP_HOST_DECAP,		/* host: decapsulated and handed to the local stack */
	FP_HOST_NOT_SERVED,	/* host: inner destination not a served subnet */
	FP_HOST_NESTED,		/* host: the inner packet is a tunnel again */
	FP_EVENTS_LOST,		/* state changes not sent: the ring buffer was full */
	FP_COUNTERS,		/* number of counters */
};

#endif
