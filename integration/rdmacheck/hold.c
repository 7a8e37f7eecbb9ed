// SPDX-License-Identifier: Apache-2.0
/*
 * rdmacheck -H: hold RDMA objects for the checkpoint/restore benchmark.
 *
 * Each side creates -q RC QPs on one PD and CQ and connects them to as
 * many on the other side (RTS), registers an MR of -s bytes (touched, so
 * every page is there to pin and dump), closes the TCP connection and
 * sleeps until killed. It reports how long creating and connecting the
 * QPs and registering the MR took: what restoring them is compared with.
 * With -N it only touches -s bytes of memory, then rewrites its first MiB
 * ten times a second: the same process without RDMA, with a small
 * working set.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "rdmacheck.h"

static double ms_since(const struct timespec *t0)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (t.tv_sec - t0->tv_sec) * 1e3 + (t.tv_nsec - t0->tv_nsec) / 1e6;
}

void run_hold(const struct opts *o)
{
	int nqp = o->depth, i, sock;
	struct ibv_qp **qps = calloc(nqp, sizeof(*qps));
	uint32_t *dqpn = calloc(nqp, sizeof(*dqpn));
	struct ibv_qp_init_attr ia = {
		.qp_type = IBV_QPT_RC,
		.cap = { .max_send_wr = 1, .max_recv_wr = 1,
			 .max_send_sge = 1, .max_recv_sge = 1 },
	};
	struct ibv_qp_attr a;
	struct ibv_port_attr pa;
	struct ibv_context *ctx;
	union ibv_gid gid, dgid;
	struct timespec t0;
	double t_create, t_connect, t_reg;
	struct ibv_pd *pd;
	struct ibv_cq *cq;
	struct ibv_mr *mr;
	char line[128], hex[33];
	void *buf;

	if (!qps || !dqpn)
		die("out of memory");
	if (o->no_rdma) {
		buf = mmap(NULL, o->size, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (buf == MAP_FAILED)
			die("%zu bytes: %s", o->size, strerror(errno));
		memset(buf, 0x5a, o->size);
		printf("hold: no RDMA; %zu bytes touched\n", o->size);
		printf("holding\n");
		/* A small working set: the first MiB, rewritten 10 times a second. */
		for (unsigned char v = 0;; v++) {
			memset(buf, v, o->size < (1 << 20) ? o->size : (1 << 20));
			usleep(100000);
		}
	}
	ctx = open_dev(o->dev);
	if (ibv_query_port(ctx, o->ib_port, &pa) ||
	    ibv_query_gid(ctx, o->ib_port, o->gidx, &gid))
		die("query port/GID: %s", strerror(errno));
	pd = ibv_alloc_pd(ctx);
	cq = ibv_create_cq(ctx, 2 * nqp, NULL, NULL, 0);
	if (!pd || !cq)
		die("PD/CQ: %s", strerror(errno));

	clock_gettime(CLOCK_MONOTONIC, &t0);
	ia.send_cq = ia.recv_cq = cq;
	for (i = 0; i < nqp; i++) {
		memset(&a, 0, sizeof(a));
		a.qp_state = IBV_QPS_INIT;
		a.port_num = o->ib_port;
		a.qp_access_flags = IBV_ACCESS_REMOTE_WRITE;
		qps[i] = ibv_create_qp(pd, &ia);
		if (!qps[i] || ibv_modify_qp(qps[i], &a, IBV_QP_STATE |
					     IBV_QP_PKEY_INDEX | IBV_QP_PORT |
					     IBV_QP_ACCESS_FLAGS))
			die("QP %d: %s", i, strerror(errno));
	}
	t_create = ms_since(&t0);

	buf = mmap(NULL, o->size, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED)
		die("%zu bytes: %s", o->size, strerror(errno));
	memset(buf, 0x5a, o->size);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	mr = ibv_reg_mr(pd, buf, o->size, IBV_ACCESS_LOCAL_WRITE |
			IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ);
	if (!mr)
		die("register %zu bytes: %s", o->size, strerror(errno));
	t_reg = ms_since(&t0);

	sock = o->server ? tcp_connect(o->server, o->port) :
			   tcp_accept(o->port);
	gid_to_hex(&gid, hex);
	send_line(sock, "%d %s\n", nqp, hex);
	for (i = 0; i < nqp; i++)
		send_line(sock, "%06x\n", qps[i]->qp_num);
	recv_line(sock, line, sizeof(line));
	if (sscanf(line, "%d %32s", &i, hex) != 2 || i != nqp ||
	    hex_to_gid(hex, &dgid))
		die("peer has %s, want %d QPs", line, nqp);
	for (i = 0; i < nqp; i++) {
		recv_line(sock, line, sizeof(line));
		if (sscanf(line, "%x", &dqpn[i]) != 1)
			die("bad QPN line %s", line);
	}

	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (i = 0; i < nqp; i++) {
		memset(&a, 0, sizeof(a));
		a.qp_state = IBV_QPS_RTR;
		a.path_mtu = pa.active_mtu;
		a.dest_qp_num = dqpn[i];
		a.max_dest_rd_atomic = 1;
		a.min_rnr_timer = 12;
		a.ah_attr.is_global = 1;
		a.ah_attr.grh.dgid = dgid;
		a.ah_attr.grh.sgid_index = o->gidx;
		a.ah_attr.grh.hop_limit = 1;
		a.ah_attr.port_num = o->ib_port;
		if (ibv_modify_qp(qps[i], &a, IBV_QP_STATE | IBV_QP_AV |
				  IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
				  IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC |
				  IBV_QP_MIN_RNR_TIMER))
			die("QP %d to RTR: %s", i, strerror(errno));
		memset(&a, 0, sizeof(a));
		a.qp_state = IBV_QPS_RTS;
		a.timeout = 14;
		a.retry_cnt = 7;
		a.rnr_retry = 7;
		a.max_rd_atomic = 1;
		if (ibv_modify_qp(qps[i], &a, IBV_QP_STATE | IBV_QP_TIMEOUT |
				  IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
				  IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC))
			die("QP %d to RTS: %s", i, strerror(errno));
	}
	t_connect = ms_since(&t0);
	close(sock);

	printf("hold: %d QPs created in %.3f ms, connected in %.3f ms; %zu bytes registered in %.3f ms\n",
	       nqp, t_create, t_connect, o->size, t_reg);
	printf("holding\n");
	for (;;)
		pause();
}
