// SPDX-License-Identifier: Apache-2.0
/*
 * rdmacheck: an RC stream whose every message is checked.
 *
 * The client sends N messages over one RC QP, the server receives them and
 * checks each one's sequence number, length, checksum and contents, so a
 * message lost, duplicated, reordered or corrupted by a migration is caught.
 * The two sides swap QP numbers, PSNs and GIDs over TCP.
 *
 * With -R the server's QP stays in RTR (it only receives), so the MigrOS
 * protocol can be exercised with a QP that never reaches RTS.
 *
 * With -M it runs the mixed mode instead (mixed.c): every object type and
 * every RC operation, checked, over -c connections of their own each.
 * With -H it holds -q connected QPs and an MR of -s bytes (hold.c); with
 * -H -N only -s bytes of memory, no RDMA object (for comparison).
 *
 * usage: rdmacheck [-p port] [-d dev] [-i ibport] [-g gidx] [-n msgs]
 *                  [-s size] [-q depth] [-w usec] [-R] [-M [-c conns]] [-H [-N]]
 *                  [server]
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "rdmacheck.h"

struct conn {
	struct ibv_context *ctx;
	struct ibv_pd *pd;
	struct ibv_cq *cq;
	struct ibv_mr *mr;
	struct ibv_qp *qp;
	char *buf;
	int sock;
};

struct dest {
	uint32_t qpn;
	uint32_t psn;
	union ibv_gid gid;
};

static void exchange(struct conn *c, const struct dest *me, struct dest *them)
{
	char line[128], gid[33];

	gid_to_hex(&me->gid, gid);
	send_line(c->sock, "%06x %06x %s\n", me->qpn, me->psn, gid);
	recv_line(c->sock, line, sizeof(line));
	if (sscanf(line, "%x %x %32s", &them->qpn, &them->psn, gid) != 3 ||
	    hex_to_gid(gid, &them->gid))
		die("bad peer address line %s", line);
}

static void setup(struct conn *c, const struct opts *o)
{
	struct ibv_qp_init_attr ia = {
		.qp_type = IBV_QPT_RC,
		.cap = { .max_send_wr = o->depth, .max_recv_wr = o->depth,
			 .max_send_sge = 1, .max_recv_sge = 1 },
	};
	struct ibv_qp_attr a = {
		.qp_state = IBV_QPS_INIT,
		.port_num = o->ib_port,
		.qp_access_flags = IBV_ACCESS_LOCAL_WRITE,
	};
	size_t len = (size_t)o->depth * o->size;

	c->ctx = open_dev(o->dev);
	c->pd = ibv_alloc_pd(c->ctx);
	c->cq = ibv_create_cq(c->ctx, 2 * o->depth, NULL, NULL, 0);
	c->buf = calloc(1, len);
	if (!c->pd || !c->cq || !c->buf)
		die("PD/CQ/buffer: %s", strerror(errno));
	c->mr = ibv_reg_mr(c->pd, c->buf, len, IBV_ACCESS_LOCAL_WRITE);
	if (!c->mr)
		die("register %zu bytes: %s", len, strerror(errno));
	ia.send_cq = ia.recv_cq = c->cq;
	c->qp = ibv_create_qp(c->pd, &ia);
	if (!c->qp)
		die("create QP: %s", strerror(errno));
	if (ibv_modify_qp(c->qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX |
			  IBV_QP_PORT | IBV_QP_ACCESS_FLAGS))
		die("QP to INIT: %s", strerror(errno));
}

static void connect_qp(struct conn *c, const struct opts *o,
		       const struct dest *them, uint32_t my_psn, int to_rts)
{
	struct ibv_port_attr pa;
	struct ibv_qp_attr a = {
		.qp_state = IBV_QPS_RTR,
		.dest_qp_num = them->qpn,
		.rq_psn = them->psn,
		.max_dest_rd_atomic = 1,
		.min_rnr_timer = 12,
		.ah_attr = {
			.is_global = 1,
			.grh = { .dgid = them->gid, .sgid_index = o->gidx,
				 .hop_limit = 1 },
			.port_num = o->ib_port,
		},
	};

	if (ibv_query_port(c->ctx, o->ib_port, &pa))
		die("query port: %s", strerror(errno));
	a.path_mtu = pa.active_mtu;
	if (ibv_modify_qp(c->qp, &a, IBV_QP_STATE | IBV_QP_AV |
			  IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
			  IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER))
		die("QP to RTR: %s", strerror(errno));
	if (!to_rts)
		return;
	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_RTS;
	a.timeout = 14;
	a.retry_cnt = 7;
	a.rnr_retry = 7;	/* infinite: the receiver may lag */
	a.sq_psn = my_psn;
	a.max_rd_atomic = 1;
	if (ibv_modify_qp(c->qp, &a, IBV_QP_STATE | IBV_QP_TIMEOUT |
			  IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
			  IBV_QP_MAX_QP_RD_ATOMIC))
		die("QP to RTS: %s", strerror(errno));
}

static void post_recv(struct conn *c, const struct opts *o, int slot)
{
	struct ibv_sge sge = {
		.addr = (uintptr_t)c->buf + (size_t)slot * o->size,
		.length = o->size,
		.lkey = c->mr->lkey,
	};
	struct ibv_recv_wr wr = { .wr_id = slot, .sg_list = &sge,
				  .num_sge = 1 }, *bad;

	if (ibv_post_recv(c->qp, &wr, &bad))
		die("post receive: %s", strerror(errno));
}

static void post_send(struct conn *c, const struct opts *o, int slot,
		      uint64_t seq)
{
	unsigned char *p = (unsigned char *)c->buf + (size_t)slot * o->size;
	struct ibv_sge sge = { .addr = (uintptr_t)p, .length = o->size,
			       .lkey = c->mr->lkey };
	struct ibv_send_wr wr = {
		.wr_id = slot, .sg_list = &sge, .num_sge = 1,
		.opcode = IBV_WR_SEND, .send_flags = IBV_SEND_SIGNALED,
	}, *bad;

	put_msg(p, o->size, seq);
	if (ibv_post_send(c->qp, &wr, &bad))
		die("post send %" PRIu64 ": %s", seq, strerror(errno));
}

static void check_msg(const struct opts *o, const unsigned char *p,
		      uint32_t byte_len, uint64_t want, unsigned char *ref)
{
	const char *bad;

	if (byte_len != o->size)
		die("message %" PRIu64 ": %u bytes, want %zu", want, byte_len,
		    o->size);
	bad = bad_msg(p, o->size, want, ref);
	if (bad)
		die("message %" PRIu64 ": the one received is %s", want, bad);
}

static void run_server(struct conn *c, const struct opts *o)
{
	struct dest me = { .qpn = c->qp->qp_num }, them;
	unsigned char *ref = malloc(o->size);
	struct ibv_wc wc[16];
	uint64_t got = 0;
	long polls = 0;
	int i, n;

	if (!ref)
		die("out of memory");
	/* A QP kept in RTR never sets its send PSN: it stays 0. */
	me.psn = o->rtr_only ? 0 : lrand48() & 0xffffff;
	if (ibv_query_gid(c->ctx, o->ib_port, o->gidx, &me.gid))
		die("query GID %d: %s", o->gidx, strerror(errno));
	for (i = 0; i < o->depth; i++)
		post_recv(c, o, i);
	c->sock = tcp_accept(o->port);
	exchange(c, &me, &them);
	connect_qp(c, o, &them, me.psn, !o->rtr_only);
	send_line(c->sock, "ready\n");

	while (got < (uint64_t)o->msgs) {
		n = ibv_poll_cq(c->cq, 16, wc);
		if (n < 0)
			die("poll CQ failed");
		if (!n && ++polls % 100000 == 0)
			check_alive(c->sock);
		for (i = 0; i < n; i++) {
			if (wc[i].status != IBV_WC_SUCCESS)
				die("receive %" PRIu64 ": %s", got,
				    ibv_wc_status_str(wc[i].status));
			check_msg(o, (unsigned char *)c->buf +
				  wc[i].wr_id * o->size, wc[i].byte_len,
				  got++, ref);
			post_recv(c, o, wc[i].wr_id);
		}
	}
	send_line(c->sock, "done %" PRIu64 "\n", got);
	printf("received %" PRIu64 " messages of %zu bytes, all in order and intact\n",
	       got, o->size);
	free(ref);
}

static void run_client(struct conn *c, const struct opts *o)
{
	struct dest me = { .qpn = c->qp->qp_num }, them;
	struct ibv_wc wc[16];
	uint64_t posted = 0, done = 0, acked;
	char line[128];
	int i, n, slot;

	me.psn = lrand48() & 0xffffff;
	if (ibv_query_gid(c->ctx, o->ib_port, o->gidx, &me.gid))
		die("query GID %d: %s", o->gidx, strerror(errno));
	c->sock = tcp_connect(o->server, o->port);
	exchange(c, &me, &them);
	connect_qp(c, o, &them, me.psn, 1);
	recv_line(c->sock, line, sizeof(line));
	if (strcmp(line, "ready"))
		die("server said %s", line);

	while (done < (uint64_t)o->msgs) {
		/* Slots are reused in order: one is free when its send is. */
		if (posted < (uint64_t)o->msgs && posted - done < (uint64_t)o->depth) {
			slot = posted % o->depth;
			post_send(c, o, slot, posted++);
			if (o->wait_us)
				usleep(o->wait_us);
		}
		n = ibv_poll_cq(c->cq, 16, wc);
		if (n < 0)
			die("poll CQ failed");
		for (i = 0; i < n; i++) {
			if (wc[i].status != IBV_WC_SUCCESS)
				die("send %" PRIu64 ": %s", done,
				    ibv_wc_status_str(wc[i].status));
			done++;
		}
	}
	recv_line(c->sock, line, sizeof(line));
	if (sscanf(line, "done %" SCNu64, &acked) != 1 || acked != done)
		die("server reported \"%s\" after %" PRIu64 " sends", line, done);
	printf("sent %" PRIu64 " messages of %zu bytes, server checked %" PRIu64 "\n",
	       done, o->size, acked);
}

int main(int argc, char **argv)
{
	struct opts o = { .port = "18515", .ib_port = 1, .gidx = 1,
			  .msgs = 1000, .size = 4096, .depth = 64,
			  .conns = 1 };
	struct conn c = { .sock = -1 };
	int ch, mixed = 0, hold = 0;

	while ((ch = getopt(argc, argv, "p:d:i:g:n:s:q:w:RMc:HN")) != -1) {
		switch (ch) {
		case 'p': o.port = optarg; break;
		case 'd': o.dev = optarg; break;
		case 'i': o.ib_port = atoi(optarg); break;
		case 'g': o.gidx = atoi(optarg); break;
		case 'n': o.msgs = atol(optarg); break;
		case 's': o.size = strtoul(optarg, NULL, 0); break;
		case 'q': o.depth = atoi(optarg); break;
		case 'w': o.wait_us = atol(optarg); break;
		case 'R': o.rtr_only = 1; break;
		case 'M': mixed = 1; break;
		case 'H': hold = 1; break;
		case 'N': o.no_rdma = 1; break;
		case 'c': o.conns = atoi(optarg); break;
		default:
			fprintf(stderr, "usage: rdmacheck [-p port] [-d dev] [-i ibport] [-g gidx] [-n msgs] [-s size] [-q depth] [-w usec] [-R] [-M [-c conns]] [-H [-N]] [server]\n");
			return 2;
		}
	}
	if (optind < argc)
		o.server = argv[optind];
	if (o.size < sizeof(struct msg_hdr) || o.depth < 1 || o.msgs < 1 ||
	    o.conns < 1)
		die("size must be at least %zu bytes, depth, messages and connections at least 1",
		    sizeof(struct msg_hdr));
	srand48(getpid() ^ time(NULL));
	setvbuf(stdout, NULL, _IOLBF, 0);

	if (hold)
		run_hold(&o);
	if (mixed) {
		run_mixed(&o);
		return 0;
	}

	setup(&c, &o);
	if (o.server)
		run_client(&c, &o);
	else
		run_server(&c, &o);
	return 0;
}
