// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * Pronto's router fast path (DESIGN.md §3), attached at tc ingress of the
 * router's links. It executes decisions the engine already took and nothing
 * else: a packet whose 5-tuple is a pinned flow in flows_v4/flows_v6 is
 * tunnelled to the flow's next hop without leaving the kernel:
 *
 *  - a plain packet (a client's, to a VIP) gets an outer IPv4/IPv6 header with
 *    bpf_skb_adjust_room(ENCAP_L3_*), so GSO/TSO survive;
 *  - a tunnel packet addressed to this router, from an admitted source (the
 *    level above), whose inner packet is a pinned flow has its outer header
 *    rewritten from "them -> us" to "us -> next hop" (same family only);
 *
 * then redirected (bpf_fib_lookup + bpf_redirect, or bpf_redirect_neigh when
 * the neighbour is not resolved yet). The inner TTL is decremented as the engine
 * does. Everything else goes on unchanged (TC_ACT_OK) to the stack and so to the
 * programmable engine: misses, fragments, IP options and extension headers,
 * ICMP and other protocols, tunnels from sources not admitted, TTL expiry, what
 * exceeds the tunnel MTU (the engine fragments or answers frag-needed), ECN
 * combinations RFC 6040 wants settled, next hops of the other family, a new
 * connection (pure SYN) on the ports of a flow that saw FIN or RST (the engine
 * places it anew). Each outcome has a per-CPU counter.
 *
 * On every packet it forwards it records in the flow's entry the time
 * (bpf_ktime_get_ns), packets, bytes and what it saw of TCP (a segment without
 * SYN: established; FIN or RST: closing), so the engine's idle timeouts stay
 * TCP-aware; a change of the TCP state also goes to the engine at once through
 * the `events` ring buffer (its eviction prefers SYN-only flows, and it places
 * a new connection on a closed flow's ports anew). A pure SYN on an entry that saw FIN/RST (port reuse) follows the
 * same pin and starts the state afresh.
 */
#include "common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/*
 * Plain hash maps, not LRU: only the engine writes and removes entries (this
 * program updates them in place), mirroring its flow table, which never holds
 * more than the map's size (the loader sets it to the table's slots). An LRU
 * map evicts on its own before it is full (per-CPU free lists), and a flow it
 * dropped would stay on the engine's path for good.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384); /* the loader sets the flow table's capacity */
	__type(key, struct fp_key_v4);
	__type(value, struct fp_flow);
} flows_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct fp_key_v6);
	__type(value, struct fp_flow);
} flows_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fp_config);
} config SEC(".maps");

/* TCP state changes for the engine (struct fp_event). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 256);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fp_prefix_v4);
	__type(value, __u8);
} tunnel_src_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 256);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fp_prefix_v6);
	__type(value, __u8);
} tunnel_src_v6 SEC(".maps");

/* The packet whose 5-tuple is looked up (the inner one of a tunnel). */
struct pkt {
	__u32 l3;	/* offset of its IP header */
	__u32 ip_len;	/* its length, header included */
	__u32 outer_len; /* tunnel: the outer packet's length; else 0 */
	__u8 family;	/* 4 or 6 */
	__u8 tos;	/* DSCP and ECN (IPv4 TOS, IPv6 traffic class) */
	__u8 df;	/* may not be fragmented */
	__u8 tcp_flags; /* 0 for UDP */
	__u8 is_tcp;
	__u8 ttl;
	__u8 key[40];	/* its key (struct fp_key_v4 or fp_key_v6), for events */
};

static __always_inline __u8 tclass6(const struct ipv6hdr *ip6)
{
	return (ip6->priority << 4) | (ip6->flow_lbl[0] >> 4);
}

static __always_inline int admitted_v4(const struct fp_config *cfg, __be32 src)
{
	struct fp_prefix_v4 k = {.prefixlen = 32};

	if (cfg->admit_any)
		return 1;
	__builtin_memcpy(k.addr, &src, 4);
	return bpf_map_lookup_elem(&tunnel_src_v4, &k) != NULL;
}

static __always_inline int admitted_v6(const struct fp_config *cfg, const struct in6_addr *src)
{
	struct fp_prefix_v6 k = {.prefixlen = 128};

	if (cfg->admit_any)
		return 1;
	__builtin_memcpy(k.addr, src, 16);
	return bpf_map_lookup_elem(&tunnel_src_v6, &k) != NULL;
}

/*
 * Parse the transport header at `l4` of protocol `proto` into `p` and the
 * key's ports. Returns a counter index on a pass, or -1 when it may go on.
 */
static __always_inline int l4_ports(struct __sk_buff *skb, __u32 l4, __u8 proto, struct pkt *p,
				    __u8 *sport, __u8 *dport)
{
	if (proto == IPPROTO_TCP) {
		struct tcphdr *th = hdr(skb, l4, sizeof(*th));

		if (!th)
			return FP_PASS_MALFORMED;
		__builtin_memcpy(sport, &th->source, 2);
		__builtin_memcpy(dport, &th->dest, 2);
		p->is_tcp = 1;
		p->tcp_flags = ((__u8 *)th)[13];
		return -1;
	}
	if (proto == IPPROTO_UDP) {
		struct udphdr *uh = hdr(skb, l4, sizeof(*uh));

		if (!uh)
			return FP_PASS_MALFORMED;
		__builtin_memcpy(sport, &uh->source, 2);
		__builtin_memcpy(dport, &uh->dest, 2);
		return -1;
	}
	return FP_PASS_PROTO;
}

/* The pinned flow of the IPv4 packet at `l3`, or a pass reason in *why. */
static __always_inline struct fp_flow *lookup_v4(struct __sk_buff *skb, __u32 l3, struct pkt *p,
						 int *why)
{
	struct fp_key_v4 k = {};
	struct iphdr *ip = hdr(skb, l3, sizeof(*ip));
	struct fp_flow *f;
	__u8 proto;
	int r;

	if (!ip) {
		*why = FP_PASS_MALFORMED;
		return NULL;
	}
	if (ip->version != 4 || ip->ihl < 5) {
		*why = FP_PASS_MALFORMED;
		return NULL;
	}
	if (ip->ihl != 5) {
		*why = FP_PASS_OPTIONS;
		return NULL;
	}
	if (ip->frag_off & bpf_htons(IP_FRAG_MASK)) {
		*why = FP_PASS_FRAGMENT;
		return NULL;
	}
	p->l3 = l3;
	p->family = 4;
	p->ip_len = bpf_ntohs(ip->tot_len);
	p->tos = ip->tos;
	p->df = !!(ip->frag_off & bpf_htons(IP_DF_));
	p->ttl = ip->ttl;
	proto = ip->protocol;
	__builtin_memcpy(k.src, &ip->saddr, 4);
	__builtin_memcpy(k.dst, &ip->daddr, 4);
	k.proto = proto;
	if (p->ip_len < sizeof(*ip) || l3 + p->ip_len > skb->len) {
		*why = FP_PASS_MALFORMED;
		return NULL;
	}
	r = l4_ports(skb, l3 + sizeof(struct iphdr), proto, p, k.sport, k.dport);
	if (r >= 0) {
		*why = r;
		return NULL;
	}
	f = bpf_map_lookup_elem(&flows_v4, &k);
	if (!f)
		*why = FP_PASS_MISS;
	else
		__builtin_memcpy(p->key, &k, sizeof(k));
	return f;
}

/* The pinned flow of the IPv6 packet at `l3`, or a pass reason in *why. */
static __always_inline struct fp_flow *lookup_v6(struct __sk_buff *skb, __u32 l3, struct pkt *p,
						 int *why)
{
	struct fp_key_v6 k = {};
	struct ipv6hdr *ip6 = hdr(skb, l3, sizeof(*ip6));
	struct fp_flow *f;
	__u8 proto;
	int r;

	if (!ip6 || ip6->version != 6) {
		*why = FP_PASS_MALFORMED;
		return NULL;
	}
	proto = ip6->nexthdr;
	if (proto == IPPROTO_FRAGMENT) {
		*why = FP_PASS_FRAGMENT;
		return NULL;
	}
	if (proto == IPPROTO_HOPOPTS || proto == IPPROTO_ROUTING || proto == IPPROTO_DSTOPTS ||
	    proto == IPPROTO_AH || proto == IPPROTO_ESP) {
		*why = FP_PASS_OPTIONS;
		return NULL;
	}
	p->l3 = l3;
	p->family = 6;
	p->ip_len = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
	p->tos = tclass6(ip6);
	p->df = 1;
	p->ttl = ip6->hop_limit;
	__builtin_memcpy(k.src, &ip6->saddr, 16);
	__builtin_memcpy(k.dst, &ip6->daddr, 16);
	k.proto = proto;
	if (l3 + p->ip_len > skb->len) {
		*why = FP_PASS_MALFORMED;
		return NULL;
	}
	r = l4_ports(skb, l3 + sizeof(struct ipv6hdr), proto, p, k.sport, k.dport);
	if (r >= 0) {
		*why = r;
		return NULL;
	}
	f = bpf_map_lookup_elem(&flows_v6, &k);
	if (!f)
		*why = FP_PASS_MISS;
	else
		__builtin_memcpy(p->key, &k, sizeof(k));
	return f;
}

/* Route to the flow's next hop from its local address. */
static __always_inline long route(struct __sk_buff *skb, const struct fp_flow *f, __u32 tot,
				  struct bpf_fib_lookup *fib)
{
	fib->ifindex = skb->ingress_ifindex;
	if (f->family == 4) {
		fib->family = AF_INET;
		__builtin_memcpy(&fib->ipv4_src, f->local, 4);
		__builtin_memcpy(&fib->ipv4_dst, f->next_hop, 4);
	} else {
		fib->family = AF_INET6;
		__builtin_memcpy(fib->ipv6_src, f->local, 16);
		__builtin_memcpy(fib->ipv6_dst, f->next_hop, 16);
	}
	/* A GSO packet is checked per segment by the kernel; a length here
	 * would be compared whole against the MTU (FRAG_NEEDED). */
	fib->tot_len = skb->gso_size ? 0 : tot;
	return bpf_fib_lookup(skb, fib, sizeof(*fib), 0);
}

/* Whether the route found can be used; else the pass reason. */
static __always_inline int route_usable(long rc)
{
	if (rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return -1;
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return FP_PASS_TOO_BIG;
	return FP_PASS_NO_ROUTE;
}

/* Send the (changed) packet along the route found. */
static __always_inline int redirect(struct __sk_buff *skb, long rc, struct bpf_fib_lookup *fib)
{
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		struct ethhdr *eth = hdr(skb, 0, sizeof(*eth));

		if (!eth)
			return TC_ACT_SHOT;
		__builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
		__builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
		return bpf_redirect(fib->ifindex, 0);
	}
	struct bpf_redir_neigh nh = {};

	nh.nh_family = fib->family;
	if (fib->family == AF_INET)
		nh.ipv4_nh = fib->ipv4_dst;
	else
		__builtin_memcpy(nh.ipv6_nh, fib->ipv6_dst, 16);
	return bpf_redirect_neigh(fib->ifindex, &nh, sizeof(nh), 0);
}

/* Decrement the TTL / hop limit of the IP header at `l3` (RFC 1624 update). */
static __always_inline int decrement_ttl(struct __sk_buff *skb, __u32 l3, __u8 family)
{
	if (family == 4) {
		struct iphdr *ip = hdr(skb, l3, sizeof(*ip));
		__u32 sum;

		if (!ip)
			return -1;
		ip->ttl -= 1;
		/* The word (ttl, proto) drops by 0x0100: the checksum rises by it. */
		sum = bpf_ntohs(ip->check) + 0x0100;
		ip->check = bpf_htons((__u16)((sum & 0xffff) + (sum >> 16)));
		return 0;
	}
	struct ipv6hdr *ip6 = hdr(skb, l3, sizeof(*ip6));

	if (!ip6)
		return -1;
	ip6->hop_limit -= 1;
	return 0;
}

static __always_inline __u16 csum_fold(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

/* The outer header toward the flow's next hop for an inner packet `p`. */
static __always_inline void outer_v4(struct iphdr *o, const struct fp_flow *f,
				     const struct fp_config *cfg, const struct pkt *p)
{
	o->version = 4;
	o->ihl = 5;
	o->tos = p->tos; /* DSCP copied (RFC 2983), ECN normal mode (RFC 6040) */
	o->tot_len = bpf_htons(p->ip_len + sizeof(struct iphdr));
	/* RFC 6864: atomic datagrams may carry any ID. */
	o->id = p->df ? 0 : (__be16)bpf_get_prandom_u32();
	o->frag_off = p->df ? bpf_htons(IP_DF_) : 0;
	o->ttl = cfg->tunnel_ttl;
	o->protocol = p->family == 4 ? IPPROTO_IPIP_ : IPPROTO_IPV6_;
	o->check = 0;
	__builtin_memcpy(&o->saddr, f->local, 4);
	__builtin_memcpy(&o->daddr, f->next_hop, 4);
	o->check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)o, sizeof(*o), 0));
}

static __always_inline void outer_v6(struct ipv6hdr *o, const struct fp_flow *f,
				     const struct fp_config *cfg, const struct pkt *p)
{
	o->version = 6;
	o->priority = p->tos >> 4;
	o->flow_lbl[0] = (p->tos & 0x0f) << 4;
	o->flow_lbl[1] = 0;
	o->flow_lbl[2] = 0;
	o->payload_len = bpf_htons(p->ip_len);
	o->nexthdr = p->family == 4 ? IPPROTO_IPIP_ : IPPROTO_IPV6_;
	o->hop_limit = cfg->tunnel_ttl;
	__builtin_memcpy(&o->saddr, f->local, 16);
	__builtin_memcpy(&o->daddr, f->next_hop, 16);
}

/* Tell the engine what the program now knows of a TCP flow. */
static __always_inline void state_changed(const struct pkt *p, __u8 seen, __u64 now)
{
	struct fp_event ev = {};

	ev.family = p->family;
	ev.seen = seen;
	ev.at_ns = now;
	__builtin_memcpy(ev.key, p->key, sizeof(ev.key));
	/* No wakeup: nothing waits on the ring (the engine drains it after every
	 * batch and timer), and a wakeup is an irq_work, a self-IPI, per event,
	 * two per connection (measured at about 5% of a router's CPU under
	 * wrk's new connections). */
	if (bpf_ringbuf_output(&events, &ev, sizeof(ev), BPF_RB_NO_WAKEUP))
		count(FP_EVENTS_LOST, 1);
}

/* Account the packet in the flow's entry. */
static __always_inline void touch(struct fp_flow *f, const struct pkt *p)
{
	__u64 now = bpf_ktime_get_ns();

	if (p->is_tcp) {
		__u8 fl = p->tcp_flags;
		__u8 seen = f->seen;

		if (fl & 0x05)
			seen |= FP_SEEN_CLOSING; /* FIN or RST */
		else if (!(fl & 0x02))
			seen |= FP_SEEN_ESTABLISHED;
		if (seen != f->seen) {
			f->seen = seen;
			state_changed(p, seen, now);
		}
	}
	f->last_seen_ns = now;
	f->packets += 1;
	f->bytes += p->ip_len;
}

/* Checks common to both paths before the packet is changed. */
static __always_inline int forwardable(struct __sk_buff *skb, const struct pkt *p,
				       const struct fp_flow *f, const struct fp_config *cfg,
				       __u32 wire_len)
{
	/* A pure SYN on a closed flow's ports is a new connection: the
	 * engine's to place (it unpins the old flow first). */
	if (p->is_tcp && (p->tcp_flags & 0x12) == 0x02 && (f->seen & FP_SEEN_CLOSING))
		return FP_PASS_REUSE;
	if (p->ttl <= 1)
		return FP_PASS_TTL;
	if (wire_len > 0xffff)
		return FP_PASS_TOO_BIG;
	if (!skb->gso_size && wire_len > cfg->tunnel_mtu)
		return FP_PASS_TOO_BIG;
	return -1;
}

/* A plain packet of a pinned flow: encapsulate and redirect. */
static __always_inline int encapsulate(struct __sk_buff *skb, const struct fp_config *cfg,
				       struct fp_flow *f, struct pkt *p)
{
	struct bpf_fib_lookup fib = {};
	__u32 overhead = f->family == 4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
	__u32 wire_len = p->ip_len + overhead;
	__u64 flags;
	long rc;
	int why;

	why = forwardable(skb, p, f, cfg, wire_len);
	if (why >= 0)
		return pass(why);
	rc = route(skb, f, wire_len, &fib);
	why = route_usable(rc);
	if (why >= 0)
		return pass(why);
	flags = f->family == 4 ? BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 : BPF_F_ADJ_ROOM_ENCAP_L3_IPV6;
	if (bpf_skb_adjust_room(skb, overhead, BPF_ADJ_ROOM_MAC, flags))
		return pass(FP_PASS_HELPER);
	/* From here on the packet is changed: a failure drops it. */
	if (decrement_ttl(skb, ETH_HLEN + overhead, p->family))
		goto error;
	if (f->family == 4) {
		struct iphdr o = {};

		outer_v4(&o, f, cfg, p);
		if (bpf_skb_store_bytes(skb, ETH_HLEN, &o, sizeof(o), 0))
			goto error;
	} else {
		struct ipv6hdr o = {};

		outer_v6(&o, f, cfg, p);
		if (bpf_skb_store_bytes(skb, ETH_HLEN, &o, sizeof(o), 0))
			goto error;
	}
	if (f->family != p->family) {
		__be16 proto = bpf_htons(f->family == 4 ? ETH_P_IP : ETH_P_IPV6);

		if (bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_proto), &proto, 2, 0))
			goto error;
	}
	touch(f, p);
	count(FP_FWD_ENCAP, 1);
	count(FP_FWD_BYTES, p->ip_len);
	return redirect(skb, rc, &fib);
error:
	return count(FP_DROP_ERROR, 1), TC_ACT_SHOT;
}

/*
 * A tunnel to us whose inner packet `p` is a pinned flow: rewrite the outer
 * header (`outer_family`, ECN `outer_ecn`) to go from us to the next hop.
 */
static __always_inline int retunnel(struct __sk_buff *skb, const struct fp_config *cfg,
				    struct fp_flow *f, struct pkt *p, __u8 outer_family,
				    __u8 outer_ecn)
{
	struct bpf_fib_lookup fib = {};
	__u8 inner_ecn = p->tos & ECN_MASK;
	long rc;
	int why;

	if (f->family != outer_family)
		return pass(FP_PASS_FAMILY);
	/* RFC 6040 decapsulation changes the inner ECN only in these cases. */
	if (outer_ecn == ECN_CE || (outer_ecn == ECN_ECT1 && inner_ecn == ECN_ECT0))
		return pass(FP_PASS_ECN);
	why = forwardable(skb, p, f, cfg, p->outer_len);
	if (why >= 0)
		return pass(why);
	rc = route(skb, f, p->outer_len, &fib);
	why = route_usable(rc);
	if (why >= 0)
		return pass(why);
	if (decrement_ttl(skb, p->l3, p->family))
		goto error;
	if (f->family == 4) {
		struct iphdr o = {};

		outer_v4(&o, f, cfg, p);
		if (bpf_skb_store_bytes(skb, ETH_HLEN, &o, sizeof(o), 0))
			goto error;
	} else {
		struct ipv6hdr o = {};

		outer_v6(&o, f, cfg, p);
		if (bpf_skb_store_bytes(skb, ETH_HLEN, &o, sizeof(o), 0))
			goto error;
	}
	touch(f, p);
	count(FP_FWD_RETUNNEL, 1);
	count(FP_FWD_BYTES, p->ip_len);
	return redirect(skb, rc, &fib);
error:
	return count(FP_DROP_ERROR, 1), TC_ACT_SHOT;
}

static __always_inline int is_local_v4(const struct fp_config *cfg, __be32 a)
{
	return cfg->has_v4 && __builtin_memcmp(cfg->local_v4, &a, 4) == 0;
}

static __always_inline int is_local_v6(const struct fp_config *cfg, const struct in6_addr *a)
{
	const __u32 *x = (const __u32 *)cfg->local_v6;

	return cfg->has_v6 && x[0] == a->in6_u.u6_addr32[0] && x[1] == a->in6_u.u6_addr32[1] &&
	       x[2] == a->in6_u.u6_addr32[2] && x[3] == a->in6_u.u6_addr32[3];
}

/* The inner packet of a tunnel to us, at `l3`, with `proto` (4 or 41). */
static __always_inline int tunnel_in(struct __sk_buff *skb, const struct fp_config *cfg,
				     __u32 l3, __u8 proto, __u32 outer_len, __u8 outer_family,
				     __u8 outer_ecn)
{
	struct pkt p = {};
	struct fp_flow *f;
	int why = FP_PASS_MISS;

	if (proto == IPPROTO_IPIP_)
		f = lookup_v4(skb, l3, &p, &why);
	else
		f = lookup_v6(skb, l3, &p, &why);
	if (!f)
		return pass(why);
	/* The outer payload must be exactly the inner packet. */
	if (p.ip_len + l3 - ETH_HLEN != outer_len)
		return pass(FP_PASS_MALFORMED);
	p.outer_len = outer_len;
	return retunnel(skb, cfg, f, &p, outer_family, outer_ecn);
}

static __always_inline int ipv4(struct __sk_buff *skb, const struct fp_config *cfg)
{
	struct iphdr *ip = hdr(skb, ETH_HLEN, sizeof(*ip));
	struct fp_flow *f;
	struct pkt p = {};
	int why = FP_PASS_MISS;
	__u32 outer_len;
	__u8 proto, ecn;
	__be32 src, dst;

	if (!ip)
		return pass(FP_PASS_MALFORMED);
	proto = ip->protocol;
	if (proto != IPPROTO_IPIP_ && proto != IPPROTO_IPV6_) {
		if (is_local_v4(cfg, ip->daddr))
			return pass(FP_PASS_LOCAL);
		f = lookup_v4(skb, ETH_HLEN, &p, &why);
		if (!f)
			return pass(why);
		return encapsulate(skb, cfg, f, &p);
	}
	if (ip->version != 4 || ip->ihl < 5)
		return pass(FP_PASS_MALFORMED);
	if (ip->ihl != 5)
		return pass(FP_PASS_OPTIONS);
	if (ip->frag_off & bpf_htons(IP_FRAG_MASK))
		return pass(FP_PASS_FRAGMENT);
	dst = ip->daddr;
	src = ip->saddr;
	ecn = ip->tos & ECN_MASK;
	outer_len = bpf_ntohs(ip->tot_len);
	if (!is_local_v4(cfg, dst))
		return pass(FP_PASS_TUNNEL_OTHER);
	if (!admitted_v4(cfg, src))
		return pass(FP_PASS_TUNNEL_SOURCE);
	if (outer_len < sizeof(struct iphdr) || ETH_HLEN + outer_len > skb->len)
		return pass(FP_PASS_MALFORMED);
	return tunnel_in(skb, cfg, ETH_HLEN + sizeof(struct iphdr), proto, outer_len, 4, ecn);
}

static __always_inline int ipv6(struct __sk_buff *skb, const struct fp_config *cfg)
{
	struct ipv6hdr *ip6 = hdr(skb, ETH_HLEN, sizeof(*ip6));
	struct in6_addr src, dst;
	struct fp_flow *f;
	struct pkt p = {};
	int why = FP_PASS_MISS;
	__u32 outer_len;
	__u8 proto, ecn;

	if (!ip6)
		return pass(FP_PASS_MALFORMED);
	proto = ip6->nexthdr;
	if (proto != IPPROTO_IPIP_ && proto != IPPROTO_IPV6_) {
		if (is_local_v6(cfg, &ip6->daddr))
			return pass(FP_PASS_LOCAL);
		f = lookup_v6(skb, ETH_HLEN, &p, &why);
		if (!f)
			return pass(why);
		return encapsulate(skb, cfg, f, &p);
	}
	if (ip6->version != 6)
		return pass(FP_PASS_MALFORMED);
	__builtin_memcpy(&src, &ip6->saddr, 16);
	__builtin_memcpy(&dst, &ip6->daddr, 16);
	ecn = tclass6(ip6) & ECN_MASK;
	outer_len = bpf_ntohs(ip6->payload_len) + sizeof(struct ipv6hdr);
	if (!is_local_v6(cfg, &dst))
		return pass(FP_PASS_TUNNEL_OTHER);
	if (!admitted_v6(cfg, &src))
		return pass(FP_PASS_TUNNEL_SOURCE);
	if (ETH_HLEN + outer_len > skb->len)
		return pass(FP_PASS_MALFORMED);
	return tunnel_in(skb, cfg, ETH_HLEN + sizeof(struct ipv6hdr), proto, outer_len, 6, ecn);
}

SEC("classifier")
int router_fast(struct __sk_buff *skb)
{
	__u32 zero = 0;
	const struct fp_config *cfg = bpf_map_lookup_elem(&config, &zero);
	struct ethhdr *eth;
	__be16 proto;

	if (!cfg)
		return TC_ACT_OK;
	eth = hdr(skb, 0, sizeof(*eth));
	if (!eth)
		return pass(FP_PASS_NOT_IP);
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_IP))
		return ipv4(skb, cfg);
	if (proto == bpf_htons(ETH_P_IPV6))
		return ipv6(skb, cfg);
	return pass(FP_PASS_NOT_IP);
}
