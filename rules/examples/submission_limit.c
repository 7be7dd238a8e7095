/* Per-subscriber state: at most LIMIT new connections a minute from each
 * subscriber (the rule's fields pick which: e.g. TCP SYNs to 587); the next
 * are rejected until the minute is over. The map holds, per subscriber, the
 * minute and the count in it. */
#include "op25b.h"

#ifndef LIMIT
#define LIMIT 3
#endif

OP25B_RULE {
    const u8 *tcp = op25b_tcp(packet, len);
    if (!tcp || (tcp[13] & 0x12) != 0x02)
        return OP25B_CONTINUE;
    i64 minute = now_ms / 60000;
    i64 entry = map_get((i64)subscriber);
    i64 count = (entry >> 32) == minute ? (entry & 0xffffffff) : 0;
    if (count >= LIMIT)
        return OP25B_REJECT;
    map_set((i64)subscriber, (minute << 32) | (count + 1));
    return OP25B_COUNT;
}
