// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * Pronto's host fast path, attached at tc ingress of a host server's links:
 * an IP-in-IP packet (IPv4 or IPv6 outside, IPv4 or IPv6 inside) whose inner
 * destination is in a subnet this host serves (vip_v4/vip_v6) loses its outer
 * header (bpf_skb_adjust_room with BPF_F_ADJ_ROOM_DECAP_L3_*, kernel >= 6.3)
 * and goes on to the local stack, which answers the client directly from the
 * VIP. Everything else goes on unchanged, to the host agent's userspace
 * endpoint (the fallback): fragments, outer options, ECN combinations RFC 6040
 * wants settled, nested tunnels, inner destinations not served.
 */
#include "common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fp_prefix_v4);
	__type(value, __u8);
} vip_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fp_prefix_v6);
	__type(value, __u8);
} vip_v6 SEC(".maps");

/* Check the inner packet at `l3` of `proto` (4 or 41) against the served
 * subnets; returns a pass reason or -1 when it may be decapsulated. */
static __always_inline int inner_ok(struct __sk_buff *skb, __u32 l3, __u8 proto, __u32 outer_len,
				    __u8 outer_ecn)
{
	__u8 inner_proto, inner_ecn;
	__u32 inner_len;

	if (proto == IPPROTO_IPIP_) {
		struct fp_prefix_v4 k = {.prefixlen = 32};
		struct iphdr *ip = hdr(skb, l3, sizeof(*ip));

		if (!ip || ip->version != 4 || ip->ihl < 5)
			return FP_PASS_MALFORMED;
		inner_proto = ip->protocol;
		inner_ecn = ip->tos & ECN_MASK;
		inner_len = bpf_ntohs(ip->tot_len);
		__builtin_memcpy(k.addr, &ip->daddr, 4);
		if (!bpf_map_lookup_elem(&vip_v4, &k))
			return FP_HOST_NOT_SERVED;
	} else {
		struct fp_prefix_v6 k = {.prefixlen = 128};
		struct ipv6hdr *ip6 = hdr(skb, l3, sizeof(*ip6));

		if (!ip6 || ip6->version != 6)
			return FP_PASS_MALFORMED;
		inner_proto = ip6->nexthdr;
		inner_ecn = ((ip6->priority << 4) | (ip6->flow_lbl[0] >> 4)) & ECN_MASK;
		inner_len = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
		__builtin_memcpy(k.addr, &ip6->daddr, 16);
		if (!bpf_map_lookup_elem(&vip_v6, &k))
			return FP_HOST_NOT_SERVED;
	}
	if (inner_proto == IPPROTO_IPIP_ || inner_proto == IPPROTO_IPV6_)
		return FP_HOST_NESTED;
	/* RFC 6040: only these combinations change or drop the inner packet. */
	if (outer_ecn == ECN_CE || (outer_ecn == ECN_ECT1 && inner_ecn == ECN_ECT0))
		return FP_PASS_ECN;
	if (inner_len + l3 - ETH_HLEN != outer_len)
		return FP_PASS_MALFORMED;
	return -1;
}

static __always_inline int decap(struct __sk_buff *skb, __u32 outer_hlen, __u8 proto)
{
	__u64 flags = proto == IPPROTO_IPIP_ ? BPF_F_ADJ_ROOM_DECAP_L3_IPV4
					     : BPF_F_ADJ_ROOM_DECAP_L3_IPV6;
	__be16 eth_proto = bpf_htons(proto == IPPROTO_IPIP_ ? ETH_P_IP : ETH_P_IPV6);

	if (bpf_skb_adjust_room(skb, -(__s32)outer_hlen, BPF_ADJ_ROOM_MAC, flags))
		return pass(FP_PASS_HELPER);
	if (bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_proto), &eth_proto, 2, 0)) {
		count(FP_DROP_ERROR, 1);
		return TC_ACT_SHOT;
	}
	count(FP_HOST_DECAP, 1);
	count(FP_FWD_BYTES, skb->len - ETH_HLEN);
	return TC_ACT_OK;
}

SEC("classifier")
int host_decap(struct __sk_buff *skb)
{
	struct ethhdr *eth = hdr(skb, 0, sizeof(*eth));
	__u32 outer_len;
	__u8 proto, ecn;
	int why;

	if (!eth)
		return pass(FP_PASS_NOT_IP);
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = hdr(skb, ETH_HLEN, sizeof(*ip));

		if (!ip || ip->version != 4 || ip->ihl < 5)
			return pass(FP_PASS_MALFORMED);
		proto = ip->protocol;
		if (proto != IPPROTO_IPIP_ && proto != IPPROTO_IPV6_)
			return pass(FP_PASS_PROTO);
		if (ip->ihl != 5)
			return pass(FP_PASS_OPTIONS);
		if (ip->frag_off & bpf_htons(IP_FRAG_MASK))
			return pass(FP_PASS_FRAGMENT);
		ecn = ip->tos & ECN_MASK;
		outer_len = bpf_ntohs(ip->tot_len);
		if (outer_len < sizeof(*ip) || ETH_HLEN + outer_len > skb->len)
			return pass(FP_PASS_MALFORMED);
		why = inner_ok(skb, ETH_HLEN + sizeof(struct iphdr), proto, outer_len, ecn);
		if (why >= 0)
			return pass(why);
		return decap(skb, sizeof(struct iphdr), proto);
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = hdr(skb, ETH_HLEN, sizeof(*ip6));

		if (!ip6 || ip6->version != 6)
			return pass(FP_PASS_MALFORMED);
		proto = ip6->nexthdr;
		if (proto != IPPROTO_IPIP_ && proto != IPPROTO_IPV6_)
			return pass(FP_PASS_PROTO);
		ecn = ((ip6->priority << 4) | (ip6->flow_lbl[0] >> 4)) & ECN_MASK;
		outer_len = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
		if (ETH_HLEN + outer_len > skb->len)
			return pass(FP_PASS_MALFORMED);
		why = inner_ok(skb, ETH_HLEN + sizeof(struct ipv6hdr), proto, outer_len, ecn);
		if (why >= 0)
			return pass(why);
		return decap(skb, sizeof(struct ipv6hdr), proto);
	}
	return pass(FP_PASS_NOT_IP);
}
