/* SPDX-License-Identifier: MIT */
/*
 * The services every node carries, attached by tempest_node_new. The node
 * (lib/node.c) knows nothing of what is built on it: each service attaches
 * its hooks and adds its listener commands through the tables of node.h,
 * from here, in the order below: the presence, pub/sub, the node's share of
 * RPC, then the `RPC` command of the responders. The node tells them of
 * changes in that order and tears them down in the reverse order, which
 * keeps the teardown of before: the direct calls are cancelled before the
 * presence record is withdrawn, and the subscribe connection closes after
 * the command connection.
 */
#include <tempest/tempest.h>

#include "node.h"
#include "presence.h"
#include "pubsub.h"
#include "rpc.h"

static int (*const attach[])(tempest_node *node) = {
    tp_presence_attach,
    tp_pubsub_attach,
    tp_rpc_attach,
    tp_responder_attach,
};

TEMPEST_API tempest_node *
tempest_node_new(struct event_base *base, const tempest_node_options *options, tempest_error *err) {
    tempest_node *node = tp_node_new(base, options, err);
    for (size_t i = 0; node != NULL && i < sizeof attach / sizeof *attach; i++) {
        int rc = attach[i](node);
        if (rc != 0) {
            tempest_node_free(node);
            tp_error_set(err, rc, "node: a service cannot attach (%s)", tempest_strerror(rc));
            return NULL;
        }
    }
    return node;
}
