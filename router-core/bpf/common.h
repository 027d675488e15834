/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * Helpers shared by router_fast.c and host_decap.c: header access that pulls
 * non-linear data in when it must, and the per-CPU counters.
 */
#ifndef PRONTO_COMMON_H
#define PRONTO_COMMON_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "fastpath.h"

/* linux-libc-dev of Debian 12 predates these (kernel 6.3). */
#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV4
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)
#endif
#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV6
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV6 (1ULL << 8)
#endif

#define AF_INET 2
#define AF_INET6 10

#define IPPROTO_IPIP_ 4
#define IPPROTO_IPV6_ 41

#define ECN_MASK 0x03
#define ECN_ECT1 0x01
#define ECN_ECT0 0x02
#define ECN_CE 0x03

/* IPv4 flags/fragment-offset word: MF and the offset mean a fragment. */
#define IP_DF_ 0x4000
#define IP_FRAG_MASK 0x3fff

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FP_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 which, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &which);

	if (c)
		*c += n;
}

/* Hand the packet on, unchanged, to the stack (and so to the engine). */
static __always_inline int pass(__u32 why)
{
	count(why, 1);
	return TC_ACT_OK;
}

/*
 * A pointer to `len` bytes at `off`, pulling non-linear data into the linear
 * area when the headers are not there yet; NULL if the packet is shorter.
 * Invalidates every packet pointer taken before.
 */
/*
 * A load of a __sk_buff field the compiler cannot turn into an access through
 * a computed context pointer (which the verifier refuses).
 */
#define SKB_FIELD(skb, field)                                                                  \
	({                                                                                     \
		__u64 __v;                                                                     \
		asm volatile("%0 = *(u32 *)(%1 + %2)"                                          \
			     : "=r"(__v)                                                       \
			     : "r"(skb), "i"(__builtin_offsetof(struct __sk_buff, field)));    \
		__v;                                                                           \
	})

static __always_inline void *hdr(struct __sk_buff *skb, __u32 off, __u32 len)
{
	void *data = (void *)(long)SKB_FIELD(skb, data);
	void *end = (void *)(long)SKB_FIELD(skb, data_end);

	if (data + off + len > end) {
		if (off + len > SKB_FIELD(skb, len) || bpf_skb_pull_data(skb, off + len))
			return NULL;
		data = (void *)(long)SKB_FIELD(skb, data);
		end = (void *)(long)SKB_FIELD(skb, data_end);
		if (data + off + len > end)
			return NULL;
	}
	return data + off;
}

#endif
