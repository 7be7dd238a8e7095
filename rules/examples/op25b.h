/* op25b program rules: what a program sees and may call.
 *
 * A program is a WebAssembly module built from C with clang's wasm32 target
 * (see build.sh). op25b calls its `rule` for each packet that the rule's
 * matching fields let through, with the packet's bytes (read-only: a copy),
 * and uses the value it returns as the rule's verdict. */
#ifndef OP25B_H
#define OP25B_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;
typedef unsigned long long u64;

/* Return values. */
#define OP25B_CONTINUE 0 /* not a match: go on with the next rule */
#define OP25B_COUNT 1    /* a match (counted), no decision */
#define OP25B_ACCEPT 2   /* forward, skipping later rules */
#define OP25B_DROP 3     /* drop silently */
#define OP25B_REJECT 4   /* drop and answer: TCP RST or ICMP prohibited */

/* direction */
#define OP25B_OUTBOUND 0 /* subscriber -> upstream */
#define OP25B_INBOUND 1  /* upstream -> subscriber */

/* The program's map: op25b owns it and sizes it (`map_size`, default 65536
 * entries); it survives a reload of the same program. An absent key reads as
 * 0; map_set returns -1 when the map is full. */
__attribute__((import_module("op25b"), import_name("map_get"))) i64 map_get(i64 key);
__attribute__((import_module("op25b"), import_name("map_set"))) int map_set(i64 key, i64 value);
__attribute__((import_module("op25b"), import_name("map_delete"))) void map_delete(i64 key);

/* The entry point. `subscriber` is the inside address's key (an IPv4 address,
 * or an IPv6 /64); `now_ms` counts milliseconds from the first packet this
 * program saw (it keeps counting over a reload of the same program). */
#define OP25B_RULE                                                             \
    __attribute__((export_name("rule"))) int rule(const u8 *packet, u32 len, \
                                                   u32 direction, u64 subscriber, i64 now_ms)

/* The TCP header of an IPv4 or IPv6 packet (no IPv6 extension headers), or 0. */
static inline const u8 *op25b_tcp(const u8 *p, u32 len) {
    if (len >= 20 && (p[0] >> 4) == 4 && p[9] == 6) {
        u32 ihl = (p[0] & 15) * 4;
        if (ihl >= 20 && ihl + 20 <= len)
            return p + ihl;
    } else if (len >= 60 && (p[0] >> 4) == 6 && p[6] == 6) {
        return p + 40;
    }
    return 0;
}

static inline u16 op25b_be16(const u8 *p) { return (u16)(p[0] << 8 | p[1]); }

#endif
