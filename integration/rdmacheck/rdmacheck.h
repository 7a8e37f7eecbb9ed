// SPDX-License-Identifier: Apache-2.0
/*
 * rdmacheck: RDMA traffic whose every message is checked, for the MigrOS
 * lab tests. rdmacheck.c is the RC stream mode, mixed.c the mode that uses
 * every object type, hold.c the benchmark's object holder, common.c what
 * they share.
 */
#ifndef RDMACHECK_H
#define RDMACHECK_H

#include <stddef.h>
#include <stdint.h>

#include <infiniband/verbs.h>

struct opts {
	const char *server;
	const char *port;
	const char *dev;
	int ib_port;
	int gidx;
	long msgs;
	size_t size;
	int depth;
	long wait_us;
	int rtr_only;
	int conns;
	int no_rdma;	/* -H -N: memory only, no RDMA object */
};

/* A message's header; the payload after it is fill(seq). */
struct msg_hdr {
	uint64_t seq;
	uint32_t len;	/* payload bytes after the header */
	uint32_t pad;
	uint64_t sum;	/* FNV-1a of the payload */
};

void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
uint64_t fnv1a(const unsigned char *p, size_t n);
void fill(unsigned char *p, size_t n, uint64_t seq);
void put_msg(unsigned char *p, size_t size, uint64_t seq);
const char *bad_msg(const unsigned char *p, size_t size, uint64_t want,
		    unsigned char *ref);
int tcp_connect(const char *host, const char *port);
int tcp_accept(const char *port);
void send_line(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void recv_line(int fd, char *line, size_t len);
void gid_to_hex(const union ibv_gid *gid, char hex[33]);
int hex_to_gid(const char *hex, union ibv_gid *gid);
struct ibv_context *open_dev(const char *name);
void check_alive(int sock);
void run_mixed(const struct opts *o);
void run_hold(const struct opts *o) __attribute__((noreturn));

#endif
