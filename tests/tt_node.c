/* SPDX-License-Identifier: MIT */
/* See tt_node.h. */
#include <string.h>

#include <event2/event.h>

#include "tt_node.h"

int tt_node_setup(void **state, tempest_node_options o, bool (*up)(void *)) {
    static tt_node_fixture f;
    memset(&f, 0, sizeof f);
    if (tt_redis_start(&f.redis, NULL) != 0 || (f.base = event_base_new()) == NULL)
        return -1;
    if (up != NULL) {
        o.redis_url = f.redis.url;
        f.node = tempest_node_new(f.base, &o, NULL);
        if (f.node == NULL || !tt_run_until(f.base, up, f.node, 3000))
            return -1;
    }
    *state = &f;
    return 0;
}

int tt_node_teardown(void **state) {
    tt_node_fixture *f = *state;
    tempest_node_free(f->node);
    event_base_free(f->base);
    tt_redis_stop(&f->redis);
    return 0;
}
