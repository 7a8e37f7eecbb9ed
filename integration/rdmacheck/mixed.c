// SPDX-License-Identifier: Apache-2.0
/*
 * rdmacheck -M: every object type and every RC operation, each checked.
 *
 * Both sides run the same loop over each of -c connections, a thread and
 * a device context of their own each (-d may list devices, comma-separated:
 * connection k uses the k-th, cyclically; it listens on or connects to
 * port -p plus k). A connection has a PD, a local MR and one the peer may
 * write, read and update atomically, a type 2 memory window bound over
 * part of it through QP A (the peer's READs go through it), an address
 * handle, a send CQ with a completion channel (waited on), a receive CQ
 * without one (polled), an SRQ and two RC QPs on it: QP A posts with
 * ibv_post_send, QP B with the ibv_wr_* API. Round r posts
 *
 *   A  SEND r (checksummed)          the peer checks it off its SRQ
 *   B  RDMA WRITE WITH IMM r         the peer checks the slot written
 *   A  RDMA READ of block r % B      through the MW, checked against
 *                                    the block's pattern
 *   B  ATOMIC FETCH_ADD 1, word 0    must return r
 *   A  ATOMIC CMP_SWP r -> r+1, w 1  must return r
 *
 * with -q rounds in flight. A message lost, duplicated, reordered or
 * corrupted, a READ answered from the wrong place or an atomic executed
 * twice or not at all stops the program with the round and what was wrong.
 * TCP serves only to swap addresses and is closed before the first round,
 * so a process can move to another host. At the end each side sends a last
 * SEND, checks the words the peer's atomics updated and destroys every
 * object, which hangs if a restored process' event counts are off.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "rdmacheck.h"

enum { OP_SEND, OP_WRITE, OP_READ, OP_FADD, OP_CSWP, OPS_PER_ROUND };

#define READ_BLOCKS 16
#define BLOCK_SEED 0x5eed0000ULL
#define ATOMICS_BYTES 64
#define RD_ATOMIC 16

struct side {
	uint32_t qpn_a, psn_a, qpn_b, psn_b;
	union ibv_gid gid;
	uint32_t rkey;
	uint64_t addr;
	uint32_t mw_rkey;	/* the MW over the READ blocks, once bound */
};

struct mconn {
	const struct opts *o;
	int idx;
	int sock;
	int window;		/* rounds in flight */
	int nrecv;		/* SRQ receives, and WRITE slots */
	size_t wsize;		/* bytes per WRITE: one packet */
	struct ibv_context *ctx;
	struct ibv_pd *pd;
	struct ibv_comp_channel *ch;
	struct ibv_cq *scq, *rcq;
	struct ibv_srq *srq;
	struct ibv_qp *qa, *qb;
	struct ibv_qp_ex *qbx;
	struct ibv_mr *lmr, *rmr;
	struct ibv_mw *mw;
	struct ibv_ah *ah;
	unsigned char *lbuf, *rbuf, *ref;
	size_t lsize, rsize;
	struct side me, peer;
	uint64_t posted, done, got_send, got_write, events, arms;
	uint8_t *pending;	/* WRs of each in-flight round not completed */
};

/*
 * Where things are. The remote MR: the two atomic words, the WRITE window
 * (a slot per SRQ receive, so a slot is written again only after the
 * receive that announced it was taken off the CQ), the READ blocks. The
 * local MR: SRQ receive slots, then per round in flight the SEND source,
 * the READ landing, the WRITE source and the atomic results.
 */
static size_t off_window(void)
{
	return ATOMICS_BYTES;
}

static size_t off_blocks(const struct mconn *c)
{
	return off_window() + (size_t)c->nrecv * c->wsize;
}

static unsigned char *recv_slot(const struct mconn *c, uint64_t i)
{
	return c->lbuf + i * c->o->size;
}

static unsigned char *send_src(const struct mconn *c, int slot)
{
	return c->lbuf + ((size_t)c->nrecv + slot) * c->o->size;
}

static unsigned char *landing(const struct mconn *c, int slot)
{
	return c->lbuf + ((size_t)c->nrecv + c->window + slot) * c->o->size;
}

static unsigned char *write_src(const struct mconn *c, int slot)
{
	return c->lbuf + ((size_t)c->nrecv + 2 * c->window) * c->o->size +
	       (size_t)slot * c->wsize;
}

static uint64_t *results(const struct mconn *c, int slot)
{
	return (uint64_t *)(write_src(c, c->window) + (size_t)slot * 16);
}

static int mtu_bytes(enum ibv_mtu m)
{
	return 128 << m;
}

static void post_srq(struct mconn *c, uint64_t i)
{
	struct ibv_sge sge = { .addr = (uintptr_t)recv_slot(c, i),
			       .length = c->o->size, .lkey = c->lmr->lkey };
	struct ibv_recv_wr wr = { .wr_id = i, .sg_list = &sge, .num_sge = 1 };
	struct ibv_recv_wr *bad;

	if (ibv_post_srq_recv(c->srq, &wr, &bad))
		die("conn %d: post SRQ receive: %s", c->idx, strerror(errno));
}

/* Connection idx uses the idx-th (cyclically) of -d's comma-separated devices. */
static void conn_dev(const char *list, int idx, char *name, size_t len)
{
	const char *p = list, *end;
	int n = 1, i;

	for (end = list; *end; end++)
		n += *end == ',';
	for (i = 0; i < idx % n; i++)
		p = strchr(p, ',') + 1;
	end = strchr(p, ',');
	snprintf(name, len, "%.*s", (int)(end ? end - p : (long)strlen(p)), p);
}

static void setup_mixed(struct mconn *c)
{
	const struct opts *o = c->o;
	int acc = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE |
		  IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC |
		  IBV_ACCESS_MW_BIND;
	struct ibv_srq_init_attr sa = { .attr = { .max_wr = c->nrecv,
						  .max_sge = 1 } };
	struct ibv_qp_init_attr ia = {
		.qp_type = IBV_QPT_RC,
		.cap = { .max_send_wr = 3 * c->window, .max_send_sge = 1 },
	};
	struct ibv_qp_init_attr_ex ix = {
		.qp_type = IBV_QPT_RC,
		.cap = { .max_send_wr = 2 * c->window, .max_send_sge = 1 },
		.comp_mask = IBV_QP_INIT_ATTR_PD |
			     IBV_QP_INIT_ATTR_SEND_OPS_FLAGS,
		.send_ops_flags = IBV_QP_EX_WITH_RDMA_WRITE_WITH_IMM |
				  IBV_QP_EX_WITH_ATOMIC_FETCH_AND_ADD,
	};
	struct ibv_qp_attr a = {
		.qp_state = IBV_QPS_INIT,
		.port_num = o->ib_port,
		.qp_access_flags = acc,
	};
	struct ibv_port_attr pa;
	int i, b;

	char dev[64];

	if (o->dev)
		conn_dev(o->dev, c->idx, dev, sizeof(dev));
	c->ctx = open_dev(o->dev ? dev : NULL);
	if (ibv_query_port(c->ctx, o->ib_port, &pa))
		die("query port: %s", strerror(errno));
	c->wsize = o->size;
	if (c->wsize > (size_t)mtu_bytes(pa.active_mtu))
		c->wsize = mtu_bytes(pa.active_mtu);
	c->lsize = ((size_t)c->nrecv + 3 * c->window) * o->size +
		   (size_t)c->window * (c->wsize + 16);
	c->rsize = off_blocks(c) + READ_BLOCKS * o->size;
	if (posix_memalign((void **)&c->lbuf, 4096, c->lsize) ||
	    posix_memalign((void **)&c->rbuf, 4096, c->rsize) ||
	    !(c->ref = malloc(o->size)) ||
	    !(c->pending = calloc(c->window, 1)))
		die("out of memory");
	memset(c->lbuf, 0, c->lsize);
	memset(c->rbuf, 0, c->rsize);
	for (b = 0; b < READ_BLOCKS; b++)
		fill(c->rbuf + off_blocks(c) + (size_t)b * o->size, o->size,
		     BLOCK_SEED + b);

	c->pd = ibv_alloc_pd(c->ctx);
	c->ch = ibv_create_comp_channel(c->ctx);
	if (!c->pd || !c->ch)
		die("conn %d: PD/channel: %s", c->idx, strerror(errno));
	c->scq = ibv_create_cq(c->ctx, OPS_PER_ROUND * c->window + 1, NULL,
			       c->ch, 0);
	c->rcq = ibv_create_cq(c->ctx, c->nrecv + 1, NULL, NULL, 0);
	c->srq = ibv_create_srq(c->pd, &sa);
	if (!c->scq || !c->rcq || !c->srq)
		die("conn %d: CQs/SRQ: %s", c->idx, strerror(errno));
	c->lmr = ibv_reg_mr(c->pd, c->lbuf, c->lsize, IBV_ACCESS_LOCAL_WRITE);
	c->rmr = ibv_reg_mr(c->pd, c->rbuf, c->rsize, acc);
	c->mw = ibv_alloc_mw(c->pd, IBV_MW_TYPE_2);
	if (!c->lmr || !c->rmr || !c->mw)
		die("conn %d: MRs/MW: %s", c->idx, strerror(errno));

	ia.send_cq = c->scq;
	ia.recv_cq = c->rcq;
	ia.srq = c->srq;
	c->qa = ibv_create_qp(c->pd, &ia);
	ix.send_cq = c->scq;
	ix.recv_cq = c->rcq;
	ix.srq = c->srq;
	ix.pd = c->pd;
	c->qb = ibv_create_qp_ex(c->ctx, &ix);
	if (!c->qa || !c->qb)
		die("conn %d: QPs: %s", c->idx, strerror(errno));
	c->qbx = ibv_qp_to_qp_ex(c->qb);
	if (!c->qbx)
		die("conn %d: QP B has no ibv_wr_* API", c->idx);
	for (i = 0; i < 2; i++)
		if (ibv_modify_qp(i ? c->qb : c->qa, &a, IBV_QP_STATE |
				  IBV_QP_PKEY_INDEX | IBV_QP_PORT |
				  IBV_QP_ACCESS_FLAGS))
			die("conn %d: QP to INIT: %s", c->idx, strerror(errno));
	for (i = 0; i < c->nrecv; i++)
		post_srq(c, i);

	c->me.qpn_a = c->qa->qp_num;
	c->me.qpn_b = c->qb->qp_num;
	c->me.psn_a = lrand48() & 0xffffff;
	c->me.psn_b = lrand48() & 0xffffff;
	c->me.rkey = c->rmr->rkey;
	c->me.addr = (uintptr_t)c->rbuf;
	if (ibv_query_gid(c->ctx, o->ib_port, o->gidx, &c->me.gid))
		die("query GID %d: %s", o->gidx, strerror(errno));
}

static void swap_sides(struct mconn *c)
{
	char line[256], gid[33];
	struct side *p = &c->peer;

	gid_to_hex(&c->me.gid, gid);
	send_line(c->sock, "%06x %06x %06x %06x %s %08x %016" PRIx64 "\n",
		  c->me.qpn_a, c->me.psn_a, c->me.qpn_b, c->me.psn_b, gid,
		  c->me.rkey, c->me.addr);
	recv_line(c->sock, line, sizeof(line));
	if (sscanf(line, "%x %x %x %x %32s %x %" SCNx64, &p->qpn_a, &p->psn_a,
		   &p->qpn_b, &p->psn_b, gid, &p->rkey, &p->addr) != 7 ||
	    hex_to_gid(gid, &p->gid))
		die("conn %d: bad peer line %s", c->idx, line);
}

static void connect_one(struct mconn *c, struct ibv_qp *qp, uint32_t dqpn,
			uint32_t dpsn, uint32_t mypsn, struct ibv_ah_attr *ah)
{
	struct ibv_port_attr pa;
	struct ibv_qp_attr a = {
		.qp_state = IBV_QPS_RTR,
		.dest_qp_num = dqpn,
		.rq_psn = dpsn,
		.max_dest_rd_atomic = RD_ATOMIC,
		.min_rnr_timer = 12,
		.ah_attr = *ah,
	};

	if (ibv_query_port(c->ctx, c->o->ib_port, &pa))
		die("query port: %s", strerror(errno));
	a.path_mtu = pa.active_mtu;
	if (ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU |
			  IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
			  IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER))
		die("conn %d: QP to RTR: %s", c->idx, strerror(errno));
	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_RTS;
	a.timeout = 14;
	a.retry_cnt = 7;
	a.rnr_retry = 7;
	a.sq_psn = mypsn;
	a.max_rd_atomic = RD_ATOMIC;
	if (ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_TIMEOUT |
			  IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
			  IBV_QP_MAX_QP_RD_ATOMIC))
		die("conn %d: QP to RTS: %s", c->idx, strerror(errno));
}

/*
 * Bind the type 2 MW over the READ blocks through QP A: the peer's READs
 * go through it, so they work only if a restore brings the binding back.
 */
static void bind_mw(struct mconn *c)
{
	struct ibv_send_wr wr = {
		.wr_id = UINT64_MAX, .opcode = IBV_WR_BIND_MW,
		.send_flags = IBV_SEND_SIGNALED,
		.bind_mw = {
			.mw = c->mw, .rkey = ibv_inc_rkey(c->mw->rkey),
			.bind_info = {
				.mr = c->rmr,
				.addr = (uintptr_t)c->rbuf + off_blocks(c),
				.length = READ_BLOCKS * c->o->size,
				.mw_access_flags = IBV_ACCESS_REMOTE_READ,
			},
		},
	}, *bad;
	struct ibv_wc wc;
	int n;

	if (ibv_post_send(c->qa, &wr, &bad))
		die("conn %d: post BIND_MW: %s", c->idx, strerror(errno));
	while (!(n = ibv_poll_cq(c->scq, 1, &wc)))
		;
	if (n < 0 || wc.status != IBV_WC_SUCCESS || wc.wr_id != UINT64_MAX)
		die("conn %d: BIND_MW: %s", c->idx,
		    n < 0 ? "poll failed" : ibv_wc_status_str(wc.status));
	c->me.mw_rkey = wr.bind_mw.rkey;
}

static void connect_mixed(struct mconn *c)
{
	struct ibv_ah_attr ah = {
		.is_global = 1,
		.grh = { .dgid = c->peer.gid, .sgid_index = c->o->gidx,
			 .hop_limit = 1 },
		.port_num = c->o->ib_port,
	};
	char line[64];

	connect_one(c, c->qa, c->peer.qpn_a, c->peer.psn_a, c->me.psn_a, &ah);
	connect_one(c, c->qb, c->peer.qpn_b, c->peer.psn_b, c->me.psn_b, &ah);
	c->ah = ibv_create_ah(c->pd, &ah);
	if (!c->ah)
		die("conn %d: AH: %s", c->idx, strerror(errno));
	bind_mw(c);
	/* Neither side sends before the other's QPs are ready. */
	send_line(c->sock, "ready %08x\n", c->me.mw_rkey);
	recv_line(c->sock, line, sizeof(line));
	if (sscanf(line, "ready %x", &c->peer.mw_rkey) != 1)
		die("conn %d: peer said %s", c->idx, line);
}

static void post_round(struct mconn *c, uint64_t r)
{
	const struct opts *o = c->o;
	int slot = r % c->window;
	uint64_t *res = results(c, slot);
	uint64_t base = r << 3;
	struct ibv_sge ss = { .addr = (uintptr_t)send_src(c, slot),
			      .length = o->size, .lkey = c->lmr->lkey };
	struct ibv_sge rs = { .addr = (uintptr_t)landing(c, slot),
			      .length = o->size, .lkey = c->lmr->lkey };
	struct ibv_sge cs = { .addr = (uintptr_t)&res[1], .length = 8,
			      .lkey = c->lmr->lkey };
	struct ibv_send_wr wr[3] = {
		{ .wr_id = base | OP_SEND, .next = &wr[1], .sg_list = &ss,
		  .num_sge = 1, .opcode = IBV_WR_SEND,
		  .send_flags = IBV_SEND_SIGNALED },
		{ .wr_id = base | OP_READ, .next = &wr[2], .sg_list = &rs,
		  .num_sge = 1, .opcode = IBV_WR_RDMA_READ,
		  .send_flags = IBV_SEND_SIGNALED,
		  .wr.rdma = { .remote_addr = c->peer.addr + off_blocks(c) +
				(r % READ_BLOCKS) * o->size,
			       .rkey = c->peer.mw_rkey } },
		{ .wr_id = base | OP_CSWP, .sg_list = &cs, .num_sge = 1,
		  .opcode = IBV_WR_ATOMIC_CMP_AND_SWP,
		  .send_flags = IBV_SEND_SIGNALED,
		  .wr.atomic = { .remote_addr = c->peer.addr + 8,
				 .compare_add = r, .swap = r + 1,
				 .rkey = c->peer.rkey } },
	}, *bad;
	int err;

	put_msg(send_src(c, slot), o->size, r);
	put_msg(write_src(c, slot), c->wsize, r);
	memset(landing(c, slot), 0, o->size);
	res[0] = res[1] = UINT64_MAX;
	c->pending[slot] = OPS_PER_ROUND;

	if (ibv_post_send(c->qa, wr, &bad))
		die("conn %d: post round %" PRIu64 " on QP A: %s", c->idx, r,
		    strerror(errno));

	ibv_wr_start(c->qbx);
	c->qbx->wr_id = base | OP_WRITE;
	c->qbx->wr_flags = IBV_SEND_SIGNALED;
	ibv_wr_rdma_write_imm(c->qbx, c->peer.rkey, c->peer.addr +
			      off_window() + (r % c->nrecv) * c->wsize,
			      htonl((uint32_t)r));
	ibv_wr_set_sge(c->qbx, c->lmr->lkey, (uintptr_t)write_src(c, slot),
		       c->wsize);
	c->qbx->wr_id = base | OP_FADD;
	c->qbx->wr_flags = IBV_SEND_SIGNALED;
	ibv_wr_atomic_fetch_add(c->qbx, c->peer.rkey, c->peer.addr, 1);
	ibv_wr_set_sge(c->qbx, c->lmr->lkey, (uintptr_t)&res[0], 8);
	err = ibv_wr_complete(c->qbx);
	if (err)
		die("conn %d: post round %" PRIu64 " on QP B: %s", c->idx, r,
		    strerror(err));
}

static void on_send_wc(struct mconn *c, const struct ibv_wc *wc)
{
	static const char *const names[] = { "SEND", "WRITE", "READ",
					     "FETCH_ADD", "CMP_SWP" };
	uint64_t r = wc->wr_id >> 3;
	int op = wc->wr_id & 7, slot = r % c->window;
	uint64_t *res = results(c, slot);

	if (op >= OPS_PER_ROUND || r >= c->posted || !c->pending[slot])
		die("conn %d: completion for nothing posted (wr_id %" PRIx64 ")",
		    c->idx, wc->wr_id);
	if (wc->status != IBV_WC_SUCCESS)
		die("conn %d: %s of round %" PRIu64 ": %s", c->idx, names[op], r,
		    ibv_wc_status_str(wc->status));
	switch (op) {
	case OP_READ:
		fill(c->ref, c->o->size, BLOCK_SEED + r % READ_BLOCKS);
		if (memcmp(c->ref, landing(c, slot), c->o->size))
			die("conn %d: READ of round %" PRIu64 " returned wrong data",
			    c->idx, r);
		break;
	case OP_FADD:
	case OP_CSWP:
		if (res[op == OP_CSWP] != r)
			die("conn %d: %s of round %" PRIu64 " returned %" PRIu64
			    ", want %" PRIu64 " (an atomic lost or done twice)",
			    c->idx, names[op], r, res[op == OP_CSWP], r);
		break;
	}
	c->pending[slot]--;
	while (c->done < c->posted && !c->pending[c->done % c->window])
		c->done++;
}

static void on_recv_wc(struct mconn *c, const struct ibv_wc *wc)
{
	const char *bad;

	if (wc->status != IBV_WC_SUCCESS)
		die("conn %d: receive: %s", c->idx,
		    ibv_wc_status_str(wc->status));
	if (wc->qp_num == c->qa->qp_num && wc->opcode == IBV_WC_RECV) {
		if (wc->byte_len != c->o->size)
			die("conn %d: SEND %" PRIu64 ": %u bytes", c->idx,
			    c->got_send, wc->byte_len);
		bad = bad_msg(recv_slot(c, wc->wr_id), c->o->size, c->got_send,
			      c->ref);
		if (bad)
			die("conn %d: SEND %" PRIu64 ": the one received is %s",
			    c->idx, c->got_send, bad);
		c->got_send++;
	} else if (wc->qp_num == c->qb->qp_num &&
		   wc->opcode == IBV_WC_RECV_RDMA_WITH_IMM &&
		   (wc->wc_flags & IBV_WC_WITH_IMM)) {
		if (ntohl(wc->imm_data) != (uint32_t)c->got_write)
			die("conn %d: WRITE %" PRIu64 " announced as %u", c->idx,
			    c->got_write, ntohl(wc->imm_data));
		bad = bad_msg(c->rbuf + off_window() +
			      (c->got_write % c->nrecv) * c->wsize, c->wsize,
			      c->got_write, c->ref);
		if (bad)
			die("conn %d: WRITE %" PRIu64 ": the data written is %s",
			    c->idx, c->got_write, bad);
		c->got_write++;
	} else {
		die("conn %d: unexpected receive (QP %06x, opcode %d)", c->idx,
		    wc->qp_num, wc->opcode);
	}
	post_srq(c, wc->wr_id);
}

/*
 * wait_event sleeps up to a millisecond on the send CQ's channel, armed
 * beforehand (the receive CQ has none, so it is polled again soon), and
 * says whether an event came.
 */
static int wait_event(struct mconn *c)
{
	struct pollfd p = { .fd = c->ch->fd, .events = POLLIN };
	struct ibv_cq *cq;
	void *cq_ctx;

	if (poll(&p, 1, 1) != 1)
		return 0;
	if (ibv_get_cq_event(c->ch, &cq, &cq_ctx))
		die("conn %d: get CQ event: %s", c->idx, strerror(errno));
	if (cq != c->scq)
		die("conn %d: event for a CQ not on the channel", c->idx);
	ibv_ack_cq_events(cq, 1);
	c->events++;
	return 1;
}

static uint64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000ULL + ts.tv_nsec / 1000;
}

/*
 * traffic runs until this side's rounds are complete and the peer's SENDs
 * and WRITEs up to message n-1 are checked; with -w, a round starts at
 * most every wait_us, and the time between is spent asleep on the
 * channel or in poll().
 */
static void traffic(struct mconn *c, uint64_t n)
{
	uint64_t next = 0, t;
	struct ibv_wc wc[16];
	int armed = 0, i, k, m;

	while (c->done < n || c->got_send < n || c->got_write < n) {
		t = c->o->wait_us ? now_us() : 0;
		if (c->posted < n && c->posted - c->done < (uint64_t)c->window &&
		    t >= next) {
			post_round(c, c->posted++);
			next = t + c->o->wait_us;
		}
		k = ibv_poll_cq(c->rcq, 16, wc);
		if (k < 0)
			die("conn %d: poll receive CQ failed", c->idx);
		for (i = 0; i < k; i++)
			on_recv_wc(c, &wc[i]);
		m = ibv_poll_cq(c->scq, 16, wc);
		if (m < 0)
			die("conn %d: poll send CQ failed", c->idx);
		for (i = 0; i < m; i++)
			on_send_wc(c, &wc[i]);
		if (k || m)
			continue;
		if (c->done == c->posted) {
			/* Nothing for the channel to report. */
			if (c->o->wait_us)
				poll(NULL, 0, 1);
			continue;
		}
		if (!armed) {
			if (ibv_req_notify_cq(c->scq, 0))
				die("conn %d: arm CQ: %s", c->idx,
				    strerror(errno));
			armed = 1;
			c->arms++;
			continue;	/* poll once more: no lost wakeup */
		}
		if (wait_event(c))
			armed = 0;
	}
}

/*
 * The last message of stream A, n, says "all my rounds are complete": its
 * completion means the peer has it, and the peer's means that the peer's
 * atomics on this side's memory are all done.
 */
static void finish(struct mconn *c)
{
	uint64_t n = c->o->msgs;
	volatile uint64_t *w = (volatile uint64_t *)c->rbuf;
	int slot = n % c->window;
	struct ibv_sge ss = { .addr = (uintptr_t)send_src(c, slot),
			      .length = c->o->size, .lkey = c->lmr->lkey };
	struct ibv_send_wr wr = { .wr_id = n << 3 | OP_SEND, .sg_list = &ss,
				  .num_sge = 1, .opcode = IBV_WR_SEND,
				  .send_flags = IBV_SEND_SIGNALED }, *bad;
	struct ibv_wc wc;
	int sent = 0, k;

	put_msg(send_src(c, slot), c->o->size, n);
	if (ibv_post_send(c->qa, &wr, &bad))
		die("conn %d: post the last SEND: %s", c->idx, strerror(errno));
	while (!sent || c->got_send <= n) {
		k = ibv_poll_cq(c->rcq, 1, &wc);
		if (k > 0)
			on_recv_wc(c, &wc);
		k = ibv_poll_cq(c->scq, 1, &wc) > 0;
		if (k && (wc.status != IBV_WC_SUCCESS ||
			  wc.wr_id != (n << 3 | OP_SEND)))
			die("conn %d: the last SEND: %s", c->idx,
			    ibv_wc_status_str(wc.status));
		sent |= k;
	}
	if (w[0] != n || w[1] != n)
		die("conn %d: the peer's atomics left %" PRIu64 " and %" PRIu64
		    ", want %" PRIu64, c->idx, w[0], w[1], n);

	/* The MW first: it holds QP A and the MR while bound. */
	if (ibv_dealloc_mw(c->mw) ||
	    ibv_destroy_qp(c->qa) || ibv_destroy_qp(c->qb) ||
	    ibv_destroy_srq(c->srq) || ibv_destroy_ah(c->ah) ||
	    ibv_destroy_cq(c->scq) ||
	    ibv_destroy_cq(c->rcq) || ibv_destroy_comp_channel(c->ch) ||
	    ibv_dereg_mr(c->lmr) || ibv_dereg_mr(c->rmr) ||
	    ibv_dealloc_pd(c->pd) || ibv_close_device(c->ctx))
		die("conn %d: destroying the objects: %s", c->idx,
		    strerror(errno));
	printf("conn %d: %" PRIu64 " rounds checked (SEND, WRITE_IMM, READ, FETCH_ADD, CMP_SWP), %" PRIu64 " channel events (%" PRIu64 " arms), objects destroyed\n",
	       c->idx, n, c->events, c->arms);
}

static void *run_conn(void *arg)
{
	struct mconn *c = arg;
	char port[16];

	snprintf(port, sizeof(port), "%d", atoi(c->o->port) + c->idx);
	setup_mixed(c);
	c->sock = c->o->server ? tcp_connect(c->o->server, port) :
				 tcp_accept(port);
	swap_sides(c);
	connect_mixed(c);
	/* From here on only RDMA: the process can move to another host. */
	close(c->sock);
	c->sock = -1;
	traffic(c, c->o->msgs);
	finish(c);
	return NULL;
}

void run_mixed(const struct opts *o)
{
	struct mconn *cs = calloc(o->conns, sizeof(*cs));
	pthread_t *ts = calloc(o->conns, sizeof(*ts));
	int i, err;

	if (!cs || !ts)
		die("out of memory");
	for (i = 0; i < o->conns; i++) {
		cs[i] = (struct mconn){ .o = o, .idx = i, .sock = -1,
					.window = o->depth,
					.nrecv = 4 * o->depth };
		err = pthread_create(&ts[i], NULL, run_conn, &cs[i]);
		if (err)
			die("thread: %s", strerror(err));
	}
	for (i = 0; i < o->conns; i++)
		pthread_join(ts[i], NULL);
	printf("mixed: %d connections, %ld rounds each, all checked\n",
	       o->conns, o->msgs);
	free(cs);
	free(ts);
}
