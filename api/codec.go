package api

import (
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/buffdb/buffdbd/internal/directio"
)

// Codec is the protobuf codec of buffdbd's server and Go clients. On the wire it is protobuf, as
// grpc-go's default codec; what differs is how many times a message's bulk bytes are copied.
//
// Blob data, pushed chunks and pulled file pieces travel as one large bytes field per message
// (up to a few MiB). The default codec copies such a field on the way out (marshal into a buffer,
// then into HTTP/2 frames) and twice on the way in (the frames into one buffer, then that buffer
// into the field). On the VMs buffdbd is benchmarked on memmove runs at 3–5 GB/s, so those copies
// cost as much CPU as hashing the bytes. This codec instead
//   - marshals the largest bytes field of the messages in sentByReference (directly in the
//     message, or in a singular submessage such as PushRequest.data) by reference: the encoded
//     message is the field's header, the caller's own slice, then the small fields;
//   - unmarshals by copying the frames once, into a buffer laid out so the large field starts on
//     a directio.Align boundary, and makes the field alias that buffer, so a blob payload can go to
//     disk with O_DIRECT without being staged again.
//
// Messages whose encoding is below aliasMin go through the default codec unchanged.
//
// Marshalling by reference relies on grpc-go's rule that a message must not be modified after
// SendMsg (the transport may write it out later): a sender must not reuse a large bytes slice it
// has passed to Send. Only the messages in sentByReference are sent so, and lent messages
// (sendLent), whose buffer the transport hands back once written.
type Codec struct{}

var _ encoding.CodecV2 = Codec{}

// sentByReference lists the messages marshalled by reference: those whose senders in buffdbd
// never reuse the bulk bytes after Send. Senders that recycle buffers lend them instead (the pull
// server, sendLent); the push client still copies. Allocating a new 1 MiB buffer per piece to send
// it by reference made pulls 25% slower on the benchmark VM than copying into a recycled one.
var sentByReference = map[protoreflect.FullName]bool{
	"buffdb.blob.StoreRequest":  true, // clients: bench, CLI
	"buffdb.blob.UpdateRequest": true,
	"buffdb.blob.GetResponse":   true, // each read into a new buffer (store.readPayload)
}

// aliasMin is the size from which a bytes field is worth passing by reference: below it the copy
// is cheaper than the reflection that avoids it.
var aliasMin = 64 << 10 // a variable so tests can exercise small messages

// Name is "proto": the codec speaks plain protobuf, under the content-subtype every client uses.
func (Codec) Name() string { return "proto" }

func defaultCodec() encoding.CodecV2 { return encoding.GetCodecV2("proto") }

// Marshal encodes v, referencing its largest bytes field instead of copying it when that is large.
func (Codec) Marshal(v any) (mem.BufferSlice, error) {
	if lm, ok := v.(*lentMessage); ok {
		head, data, tail, err := marshalSplit(lm.ProtoReflect())
		if err != nil {
			return nil, err
		}
		if data != nil {
			lm.taken = true
			return mem.BufferSlice{mem.SliceBuffer(head), mem.NewBuffer(&data, releaser(lm.release)), mem.SliceBuffer(tail)}, nil
		}
		v = lm.Message
	}
	m, ok := v.(proto.Message)
	if !ok {
		return defaultCodec().Marshal(v)
	}
	if !sentByReference[m.ProtoReflect().Descriptor().FullName()] {
		return defaultCodec().Marshal(v)
	}
	head, data, tail, err := marshalSplit(m.ProtoReflect())
	if err != nil {
		return nil, err
	}
	if data == nil {
		return defaultCodec().Marshal(v)
	}
	return mem.BufferSlice{mem.SliceBuffer(head), mem.SliceBuffer(data), mem.SliceBuffer(tail)}, nil
}

// bulkField is m's largest populated bytes field of at least aliasMin bytes, looked for among m's
// own fields and, one level down, in its singular message fields. sub is the submessage field that
// holds it (nil when it is m's own).
func bulkField(m protoreflect.Message) (sub, field protoreflect.FieldDescriptor, data []byte) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() || fd.IsMap():
		case fd.Kind() == protoreflect.BytesKind:
			if b := v.Bytes(); len(b) >= aliasMin && len(b) > len(data) {
				sub, field, data = nil, fd, b
			}
		case fd.Kind() == protoreflect.MessageKind:
			v.Message().Range(func(ifd protoreflect.FieldDescriptor, iv protoreflect.Value) bool {
				if !ifd.IsList() && !ifd.IsMap() && ifd.Kind() == protoreflect.BytesKind {
					if b := iv.Bytes(); len(b) >= aliasMin && len(b) > len(data) {
						sub, field, data = fd, ifd, b
					}
				}
				return true
			})
		}
		return true
	})
	return sub, field, data
}

// marshalSplit encodes m as head + data + tail, where data is the bulk field's bytes, shared with
// m (nil when m has no bulk field). The bulk field is encoded first, so a receiver finds it in the
// first frame and can align it.
func marshalSplit(m protoreflect.Message) (head, data, tail []byte, err error) {
	sub, field, data := bulkField(m)
	if data == nil {
		return nil, nil, nil, nil
	}
	opts := proto.MarshalOptions{}
	if sub == nil {
		rest, err := opts.Marshal(without(m, field).Interface())
		if err != nil {
			return nil, nil, nil, err
		}
		head = protowire.AppendTag(nil, field.Number(), protowire.BytesType)
		head = protowire.AppendVarint(head, uint64(len(data)))
		return head, data, rest, nil
	}
	inner, err := opts.Marshal(without(m.Get(sub).Message(), field).Interface())
	if err != nil {
		return nil, nil, nil, err
	}
	outer, err := opts.Marshal(without(m, sub).Interface())
	if err != nil {
		return nil, nil, nil, err
	}
	bulk := protowire.SizeTag(field.Number()) + protowire.SizeBytes(len(data))
	head = protowire.AppendTag(nil, sub.Number(), protowire.BytesType)
	head = protowire.AppendVarint(head, uint64(bulk+len(inner)))
	head = protowire.AppendTag(head, field.Number(), protowire.BytesType)
	head = protowire.AppendVarint(head, uint64(len(data)))
	// The submessage's other fields follow its bytes, inside its length; m's other fields last.
	return head, data, append(inner, outer...), nil
}

// without is a shallow copy of m lacking field fd (values are shared, not copied; nothing is
// modified).
func without(m protoreflect.Message, fd protoreflect.FieldDescriptor) protoreflect.Message {
	c := m.Type().New()
	m.Range(func(f protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if f != fd {
			c.Set(f, v)
		}
		return true
	})
	c.SetUnknown(m.GetUnknown())
	return c
}

// RecvBufferer is implemented by a message passed to RecvMsg that offers the buffer to decode into
// and where its bulk bytes should start in memory. A receiver of a long stream of large messages
// recycles its buffers this way instead of having each message allocate a fresh one (which the Go
// runtime zeroes and the kernel faults in: on the benchmark VM that cost as much as the copy), and
// places each message's bytes at the memory phase of their file offset, so that an O_DIRECT writer
// takes them without staging. buf must be directio-aligned at its start and unused by anything
// else until the decoded message is dropped; a buffer too small for the message is ignored. Other
// codecs see the embedded message only, so the offer is a hint, never a requirement.
type RecvBufferer interface {
	RecvBuffer() (buf []byte, phase int)
}

// Unmarshal decodes data into v. A large message is copied once, into a buffer its bulk bytes field
// then aliases, starting at an address ≡ 0 (mod directio.Align) or at the phase v's RecvBuffer asks.
func (Codec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(proto.Message)
	if !ok || data.Len() < aliasMin {
		return defaultCodec().Unmarshal(data, v)
	}
	var offered []byte
	phase := 0
	if rb, ok := v.(RecvBufferer); ok {
		offered, phase = rb.RecvBuffer()
	}
	pad := 0
	if off := bulkOffset(prefix(data, 1<<10), m.ProtoReflect().Descriptor()); off >= 0 {
		pad = ((phase-off)%directio.Align + directio.Align) % directio.Align
	}
	var buf []byte
	if n := pad + data.Len(); cap(offered) >= n && directio.Aligned(offered[:n]) {
		buf = offered[pad:n]
	} else {
		buf = directio.AlignedBuffer(n)[pad:]
	}
	data.CopyTo(buf)
	return unmarshalAliased(buf, m.ProtoReflect())
}

// prefix is data's first n bytes (fewer if data is shorter): the first buffer itself when it is
// long enough, as an HTTP/2 frame (16 KiB) always is.
func prefix(data mem.BufferSlice, n int) []byte {
	if first := data[0].ReadOnlyData(); len(first) >= n {
		return first
	}
	var b []byte
	for _, buf := range data {
		b = append(b, buf.ReadOnlyData()[:min(buf.Len(), n-len(b))]...)
		if len(b) == n {
			break
		}
	}
	return b
}

// bulkOffset guesses, from a message's first bytes b, where its bulk field's bytes start: the first
// length-delimited field of at least aliasMin bytes that is a bytes field, or one inside such a
// singular submessage. -1 when b does not tell. Only alignment depends on the guess.
func bulkOffset(b []byte, md protoreflect.MessageDescriptor) int {
	for pos := 0; pos < len(b); {
		num, typ, n := protowire.ConsumeTag(b[pos:])
		if n < 0 {
			return -1
		}
		pos += n
		if typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, b[pos:])
			if n < 0 {
				return -1
			}
			pos += n
			continue
		}
		l, n := protowire.ConsumeVarint(b[pos:])
		if n < 0 {
			return -1
		}
		pos += n
		if l >= uint64(aliasMin) {
			fd := md.Fields().ByNumber(num)
			switch {
			case fd == nil || fd.IsList() || fd.IsMap():
				return -1
			case fd.Kind() == protoreflect.BytesKind:
				return pos
			case fd.Kind() == protoreflect.MessageKind:
				if off := bulkOffset(b[pos:min(len(b), pos+int(l))], fd.Message()); off >= 0 {
					return pos + off
				}
			}
			return -1
		}
		pos += int(l)
	}
	return -1
}

// unmarshalAliased decodes b into m; m's bulk bytes field (see bulkField) aliases b. The field is
// cut out of the encoding, the rest decoded normally, and the field set to its slice of b — the
// same result as proto.Unmarshal, which the tests check, except that the bytes are shared.
func unmarshalAliased(b []byte, m protoreflect.Message) error {
	start, end, fd, value, ok := bulkRange(b, m.Descriptor())
	if !ok {
		return proto.Unmarshal(b, m.Interface())
	}
	rest := make([]byte, 0, len(b)-(end-start))
	rest = append(append(rest, b[:start]...), b[end:]...)
	if err := proto.Unmarshal(rest, m.Interface()); err != nil {
		return err
	}
	if fd.Kind() == protoreflect.BytesKind {
		m.Set(fd, protoreflect.ValueOfBytes(value))
		return nil
	}
	// A submessage: rest held none of it, so it is decoded from its own bytes alone.
	sub := m.NewField(fd)
	if err := unmarshalAliased(value, sub.Message()); err != nil {
		return err
	}
	m.Set(fd, sub)
	return nil
}

// bulkRange finds in b (an encoding of a message of type md) the largest length-delimited field
// that is a singular bytes or message field, at least aliasMin long and occurring once (so that
// last-one-wins and merge semantics cannot differ from proto.Unmarshal's), and no other member of
// its oneof is present. It returns the field's encoding [start, end) and its value.
func bulkRange(b []byte, md protoreflect.MessageDescriptor) (start, end int, fd protoreflect.FieldDescriptor, value []byte, ok bool) {
	seen := map[protowire.Number]int{}
	var bestNum protowire.Number
	for pos := 0; pos < len(b); {
		num, typ, n := protowire.ConsumeTag(b[pos:])
		if n < 0 {
			return 0, 0, nil, nil, false
		}
		vn := protowire.ConsumeFieldValue(num, typ, b[pos+n:])
		if vn < 0 {
			return 0, 0, nil, nil, false
		}
		seen[num]++
		if typ == protowire.BytesType {
			if v, _ := protowire.ConsumeBytes(b[pos+n:]); len(v) >= aliasMin && len(v) > len(value) {
				start, end, value, bestNum = pos, pos+n+vn, v, num
			}
		}
		pos += n + vn
	}
	if value == nil || seen[bestNum] != 1 {
		return 0, 0, nil, nil, false
	}
	fd = md.Fields().ByNumber(bestNum)
	if fd == nil || fd.IsList() || fd.IsMap() || (fd.Kind() != protoreflect.BytesKind && fd.Kind() != protoreflect.MessageKind) {
		return 0, 0, nil, nil, false
	}
	if oo := fd.ContainingOneof(); oo != nil {
		for i := range oo.Fields().Len() {
			if other := oo.Fields().Get(i); other != fd && seen[other.Number()] > 0 {
				return 0, 0, nil, nil, false
			}
		}
	}
	return start, end, fd, value, true
}

// lentMessage is a message whose bulk bytes (see bulkField) its sender lends to the transport
// instead of letting the codec copy them: Codec passes them on by reference and the transport calls
// release once it has written them, so the sender can reuse the buffer without allocating another.
// Any other codec marshals the embedded message (a copy), and sendLent releases the buffer itself.
type lentMessage struct {
	proto.Message
	release func()
	taken   bool // Codec took the buffer: the transport releases it
}

// sendLent sends msg on stream, lending it the buffer holding msg's bulk bytes: release is called
// exactly once, when the buffer may be reused — after the transport wrote it, or at once if it
// was copied or never sent.
func sendLent(stream grpc.ServerStream, msg proto.Message, release func()) error {
	lm := &lentMessage{Message: msg, release: release}
	err := stream.SendMsg(lm)
	if !lm.taken {
		release()
	}
	return err
}

// releaser is the mem.BufferPool of one lent buffer: the transport "returns" it by calling Put.
type releaser func()

func (releaser) Get(int) *[]byte { panic("api: a lent buffer's pool gives nothing out") }
func (r releaser) Put(*[]byte)   { r() }
