/* A port-based program: rejects new TCP connections to the ports in its
 * list, counts the other SYNs it sees, and lets the rest go on. */
#include "op25b.h"

static const u16 blocked[] = {2525, 26, 465};

OP25B_RULE {
    const u8 *tcp = op25b_tcp(packet, len);
    if (!tcp || direction != OP25B_OUTBOUND)
        return OP25B_CONTINUE;
    u8 flags = tcp[13];
    if ((flags & 0x12) != 0x02) /* SYN without ACK */
        return OP25B_CONTINUE;
    u16 port = op25b_be16(tcp + 2);
    for (u32 i = 0; i < sizeof blocked / sizeof blocked[0]; i++)
        if (port == blocked[i])
            return OP25B_REJECT;
    return OP25B_COUNT;
}
