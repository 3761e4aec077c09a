package nat

import (
	"errors"
	"fmt"
	"slices"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/cnichain/plugins/pkg/iptbatch"
)

// nftConn is one netlink socket to nftables for everything a verb asks and
// changes. google/nftables opens a socket per call unless told otherwise,
// and a socket costs more than its round trips: the kernel's release of a
// NETLINK_NETFILTER socket waits for the objects that transactions in its
// netns deleted to be freed after an RCU grace period (nf_tables'
// NETLINK_URELEASE handler flushes that work), so each close after a DEL's
// commit, ours or another runtime's, waits milliseconds. Hence one socket,
// closed once, at the end of the verb, after the node-wide locks of the
// shared tables are released (only a failure reopens it under one).
type nftConn struct {
	*nftables.Conn
	raw *netlink.Conn // the same socket, for the requests google/nftables lacks
}

// openNFT opens the connection, with buffers for a whole transaction:
// every rule added is echoed back, and 50 mappings' worth of echoes
// overflow the default receive buffer (ENOBUFS); a restore's transaction
// overflows the default send buffer (EMSGSIZE). Forcing the sizes needs
// CAP_NET_ADMIN, which a CNI plugin has.
func openNFT() (*nftConn, error) {
	nc := &nftConn{}
	c, err := nftables.New(nftables.AsLasting(), nftables.WithSockOptions(func(conn *netlink.Conn) error {
		nc.raw = conn
		raw, err := conn.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		err = raw.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20)
			if serr == nil {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 16<<20)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}))
	if err != nil {
		return nil, err
	}
	nc.Conn = c
	return nc, nil
}

// Close closes the socket.
func (c *nftConn) Close() error { return c.CloseLasting() }

// commit sends the queued transaction. A failed one may leave answers
// unread on the socket, which would answer the next request: then the
// connection is opened anew for whatever comes next.
func (c *nftConn) commit() error {
	err := c.Flush()
	if err == nil {
		return nil
	}
	return errors.Join(err, c.reopen())
}

// reopen replaces the socket with a new one, dropping what was queued.
func (c *nftConn) reopen() error {
	_ = c.CloseLasting()
	fresh, err := openNFT()
	if err != nil {
		return err
	}
	*c = *fresh
	return nil
}

// leadsTo asks which chain each of elems' keys leads to in its map of
// fam's table, key by key (a get of one element, not a dump of the map:
// what it costs does not grow with the node), all asked in one write. A
// key not there (nor its map or table) is left out.
func (c *nftConn) leadsTo(fam iptbatch.Family, elems []dispatchElem) (dispatchState, error) {
	st := dispatchState{}
	if len(elems) == 0 {
		return st, nil
	}
	msgs := make([]netlink.Message, len(elems))
	for i, e := range elems {
		m, err := getElemRequest(fam, e.Map, e.Key)
		if err != nil {
			return nil, err
		}
		msgs[i] = m
	}
	sent, err := c.raw.SendMessages(msgs)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("get elements: %w", err), c.reopen())
	}
	bySeq := map[uint32]dispatchElem{}
	for i, m := range sent {
		bySeq[m.Header.Sequence] = elems[i]
	}
	// One answer per request, the element or an error, each read even
	// after an error: none may be left to answer the next request.
	var failed error
	for len(bySeq) > 0 {
		replies, err := c.raw.Receive()
		var oerr *netlink.OpError
		if errors.As(err, &oerr) {
			if _, ok := bySeq[oerr.Sequence]; ok {
				delete(bySeq, oerr.Sequence)
				if !errors.Is(oerr.Err, unix.ENOENT) && failed == nil {
					failed = fmt.Errorf("get elements: %w", err)
				}
				continue
			}
		}
		if err != nil {
			return nil, errors.Join(fmt.Errorf("get elements: %w", err), c.reopen())
		}
		for _, r := range replies {
			e, ok := bySeq[r.Header.Sequence]
			if !ok {
				return nil, errors.Join(fmt.Errorf("get elements: an answer to no request (sequence %d)", r.Header.Sequence), c.reopen())
			}
			delete(bySeq, r.Header.Sequence)
			if st[e.Map] == nil {
				st[e.Map] = map[string]string{}
			}
			st[e.Map][string(e.Key)] = elemChain(r.Data)
		}
	}
	if failed != nil {
		return nil, failed
	}
	return st, nil
}

// getElemRequest asks for the element of key in map name of fam's table
// (NFT_MSG_GETSETELEM without a dump: the kernel answers with it, or
// ENOENT).
func getElemRequest(fam iptbatch.Family, name string, key []byte) (netlink.Message, error) {
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.NFTA_SET_ELEM_LIST_TABLE, nftTable)
	ae.String(unix.NFTA_SET_ELEM_LIST_SET, name)
	ae.Nested(unix.NFTA_SET_ELEM_LIST_ELEMENTS, func(list *netlink.AttributeEncoder) error {
		list.Nested(unix.NFTA_LIST_ELEM, func(elem *netlink.AttributeEncoder) error {
			elem.Nested(unix.NFTA_SET_ELEM_KEY, func(k *netlink.AttributeEncoder) error {
				k.Bytes(unix.NFTA_DATA_VALUE, key)
				return nil
			})
			return nil
		})
		return nil
	})
	attrs, err := ae.Encode()
	if err != nil {
		return netlink.Message{}, err
	}
	return netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSETELEM), Flags: netlink.Request},
		// nfgenmsg: family, version, resource id.
		Data: append([]byte{byte(nftFamily(fam)), unix.NFNETLINK_V0, 0, 0}, attrs...),
	}, nil
}

// elemChain is the chain the one element of an NFT_MSG_NEWSETELEM answer
// jumps to, "" when it has none.
func elemChain(data []byte) string {
	if len(data) < 4 {
		return ""
	}
	var chain string
	walk(data[4:], func(typ uint16, b []byte) {
		if typ != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
			return
		}
		walk(b, func(_ uint16, elem []byte) { // NFTA_LIST_ELEM
			walk(elem, func(typ uint16, b []byte) {
				if typ == unix.NFTA_SET_ELEM_DATA {
					walk(b, func(typ uint16, b []byte) {
						if typ == unix.NFTA_DATA_VERDICT {
							chain = verdictChain(b)
						}
					})
				}
			})
		})
	})
	return chain
}

// walk calls fn with each attribute of b; malformed attributes end it.
func walk(b []byte, fn func(typ uint16, data []byte)) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return
	}
	for ad.Next() {
		fn(ad.Type(), ad.Bytes())
	}
}

// ruleCounts counts the rules of each chain of fam's table in one dump of
// the table's rules (google/nftables dumps a chain at a time: thousands of
// requests on a node of thousands of attachments). Chains without rules
// are not in it.
func (c *nftConn) ruleCounts(fam iptbatch.Family) (map[string]int, error) {
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.NFTA_RULE_TABLE, nftTable)
	attrs, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	req := netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETRULE), Flags: netlink.Request | netlink.Dump},
		Data:   append([]byte{byte(nftFamily(fam)), unix.NFNETLINK_V0, 0, 0}, attrs...),
	}
	// A dump the table changed during (another network's ADD) says so: it
	// is made again.
	var msgs []netlink.Message
	for attempt := 0; ; attempt++ {
		if msgs, err = c.raw.Execute(req); err != nil {
			return nil, errors.Join(fmt.Errorf("dump the rules of table %s: %w", nftTable, err), c.reopen())
		}
		if !slices.ContainsFunc(msgs, func(m netlink.Message) bool { return m.Header.Flags&netlink.DumpInterrupted != 0 }) {
			break
		}
		if attempt == 4 {
			return nil, fmt.Errorf("dump the rules of table %s: changed during each of 5 dumps", nftTable)
		}
	}
	counts := map[string]int{}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		walk(m.Data[4:], func(typ uint16, b []byte) {
			if typ == unix.NFTA_RULE_CHAIN {
				counts[string(trimNUL(b))]++
			}
		})
	}
	return counts, nil
}
