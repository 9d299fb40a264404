package api

import (
	"bytes"
	"math/rand/v2"
	"testing"
	"unsafe"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	blobpb "github.com/buffdb/buffdbd/api/proto/blobpb"
	registrypb "github.com/buffdb/buffdbd/api/proto/registrypb"
	"github.com/buffdb/buffdbd/internal/directio"
)

func randBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)}).Read(b)
	return b
}

// codecCases are messages with and without a bulk field, at the top level and one level down,
// with the small fields around it set.
func codecCases() map[string]proto.Message {
	meta, tx, empty := "model weights", "tx-1", ""
	return map[string]proto.Message{
		"store request":      &blobpb.StoreRequest{Bytes: randBytes(1, 1<<20), Metadata: &meta, TransactionId: &tx},
		"store, empty meta":  &blobpb.StoreRequest{Bytes: randBytes(2, 3<<20+17), Metadata: &empty},
		"get response":       &blobpb.GetResponse{Bytes: randBytes(3, aliasMin)},
		"small store":        &blobpb.StoreRequest{Bytes: []byte("tiny"), Metadata: &meta},
		"empty store":        &blobpb.StoreRequest{},
		"update, both bytes": &blobpb.UpdateRequest{Id: 7, Bytes: randBytes(4, 200<<10), ShouldUpdateMetadata: true, Metadata: &meta},
		"pull data": &registrypb.PullResponse{Msg: &registrypb.PullResponse_Data{Data: &registrypb.PullData{
			File: 3, Offset: 1 << 40, Data: randBytes(5, 4<<20-4<<10)}}},
		"push data": &registrypb.PushRequest{Msg: &registrypb.PushRequest_Data{Data: &registrypb.ChunkData{
			Data: randBytes(6, 1<<20)}}},
		"pull manifest": &registrypb.PullResponse{Msg: &registrypb.PullResponse_Manifest{Manifest: &registrypb.PullManifest{
			Info: &registrypb.ModelInfo{Name: "m", Version: "v"}}}},
	}
}

// split cuts b into buffers at random points, as HTTP/2 frames arrive.
func split(b []byte, r *rand.Rand, max int) mem.BufferSlice {
	var s mem.BufferSlice
	for len(b) > 0 {
		n := min(len(b), 1+r.IntN(max))
		s = append(s, mem.SliceBuffer(b[:n]))
		b = b[n:]
	}
	return s
}

func TestCodec_MarshalIsProtobufAndSharesBulkBytes(t *testing.T) {
	for name, msg := range codecCases() {
		t.Run(name, func(t *testing.T) {
			out, err := Codec{}.Marshal(msg)
			if err != nil {
				t.Fatal(err)
			}
			got := msg.ProtoReflect().Type().New().Interface()
			if err := proto.Unmarshal(out.Materialize(), got); err != nil {
				t.Fatalf("the encoding is not protobuf: %v", err)
			}
			if !proto.Equal(got, msg) {
				t.Fatal("decoding the codec's encoding gave a different message")
			}
			_, _, bulk := bulkField(msg.ProtoReflect())
			shared := false
			for _, b := range out {
				d := b.ReadOnlyData()
				shared = shared || (len(d) > 0 && len(bulk) > 0 && unsafe.SliceData(d) == unsafe.SliceData(bulk))
			}
			want := len(bulk) >= aliasMin && sentByReference[msg.ProtoReflect().Descriptor().FullName()]
			if shared != want {
				t.Fatalf("bulk bytes (%d B) shared = %v, want %v", len(bulk), shared, want)
			}
		})
	}
}

func TestCodec_UnmarshalMatchesProtoAndAlignsBulkBytes(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for name, msg := range codecCases() {
		t.Run(name, func(t *testing.T) {
			wire, err := proto.Marshal(msg)
			if err != nil {
				t.Fatal(err)
			}
			for _, frame := range []int{16 << 10, 1000, len(wire) + 1} {
				got := msg.ProtoReflect().Type().New().Interface()
				if err := (Codec{}).Unmarshal(split(wire, r, frame), got); err != nil {
					t.Fatal(err)
				}
				if !proto.Equal(got, msg) {
					t.Fatalf("frames of up to %d B: decoded a different message", frame)
				}
				if _, _, bulk := bulkField(got.ProtoReflect()); len(bulk) > 0 && uintptr(unsafe.Pointer(unsafe.SliceData(bulk)))%directio.Align != 0 {
					t.Fatalf("frames of up to %d B: bulk bytes not %d-aligned", frame, directio.Align)
				}
			}
			// The codec's own encoding (bulk field first) decodes the same way.
			out, err := Codec{}.Marshal(msg)
			if err != nil {
				t.Fatal(err)
			}
			got := msg.ProtoReflect().Type().New().Interface()
			if err := (Codec{}).Unmarshal(split(out.Materialize(), r, 16<<10), got); err != nil || !proto.Equal(got, msg) {
				t.Fatalf("round trip through the codec: err %v, equal %v", err, proto.Equal(got, msg))
			}
		})
	}
}

// offeringPull is a pull message received through a RecvBufferer, as the registry's pull client
// receives them.
type offeringPull struct {
	*registrypb.PullResponse
	buf   []byte
	phase int
}

func (m *offeringPull) RecvBuffer() ([]byte, int) { return m.buf, m.phase }

// A receiver's offered buffer is used when it is aligned and large enough; otherwise the codec
// allocates as usual. Either way the bulk bytes start at the memory phase asked and the message
// decodes the same, and the default codec decodes into the embedded message.
func TestCodec_UnmarshalIntoOfferedBuffer(t *testing.T) {
	want := &registrypb.PullResponse{Msg: &registrypb.PullResponse_Data{Data: &registrypb.PullData{
		File: 2, Offset: 123457, Data: randBytes(9, 1<<20)}}}
	out, err := Codec{}.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	wire := out.Materialize()
	r := rand.New(rand.NewPCG(5, 6))
	ptr := func(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }
	large := directio.AlignedBuffer(1<<20 + 2*directio.Align)
	cases := map[string]struct {
		buf   []byte
		phase int
		used  bool
	}{
		"phase 0":             {large, 0, true},
		"file offset's phase": {large, 123457 % directio.Align, true},
		"last phase":          {large, directio.Align - 1, true},
		"too small":           {directio.AlignedBuffer(1 << 20), 5, false},
		"unaligned":           {append(make([]byte, 1, 1<<20+3*directio.Align), 0)[1:], 7, false},
		"no buffer, a phase":  {nil, 100, false},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			m := &offeringPull{PullResponse: new(registrypb.PullResponse), buf: c.buf, phase: c.phase}
			if err := (Codec{}).Unmarshal(split(wire, r, 16<<10), m); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(m.PullResponse, want) {
				t.Fatal("decoded a different message")
			}
			data := m.GetData().Data
			inOffer := c.buf != nil && ptr(data) >= ptr(c.buf[:cap(c.buf)]) && ptr(data) < ptr(c.buf[:cap(c.buf)])+uintptr(cap(c.buf))
			if inOffer != c.used {
				t.Fatalf("bytes in the offered buffer: %v, want %v", inOffer, c.used)
			}
			if int(ptr(data)%directio.Align) != c.phase {
				t.Fatalf("bytes at phase %d, want %d", ptr(data)%directio.Align, c.phase)
			}
		})
	}
	// Through grpc-go's own codec the offer is ignored, and the message still decodes.
	m := &offeringPull{PullResponse: new(registrypb.PullResponse), buf: large}
	if err := defaultCodec().Unmarshal(mem.BufferSlice{mem.SliceBuffer(wire)}, m); err != nil || !proto.Equal(m.PullResponse, want) {
		t.Fatalf("default codec: err %v, equal %v", err, proto.Equal(m.PullResponse, want))
	}
}

// Encodings proto.Unmarshal resolves by last-one-wins or merging, or rejects, must come out the
// same through the codec.
func TestCodec_UnmarshalEdgeCases(t *testing.T) {
	big1, big2 := randBytes(7, 100<<10), randBytes(8, 90<<10)
	field := func(b []byte, num protowire.Number, v []byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(b, num, protowire.BytesType), v)
	}
	pullData := func(v []byte) []byte {
		return field(protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 9), 3, v)
	}
	cases := map[string]struct {
		wire []byte
		msg  proto.Message
	}{
		"bytes field twice":             {field(field(nil, 1, big1), 1, big2), &blobpb.StoreRequest{}},
		"bytes field twice, big last":   {field(field(nil, 1, big2), 1, big1), &blobpb.StoreRequest{}},
		"submessage twice (merged)":     {field(field(nil, 2, pullData(big1)), 2, pullData(big2)), &registrypb.PullResponse{}},
		"oneof: data, then manifest":    {field(field(nil, 2, pullData(big1)), 1, nil), &registrypb.PullResponse{}},
		"oneof: manifest, then data":    {field(field(nil, 1, nil), 2, pullData(big1)), &registrypb.PullResponse{}},
		"bulk in a string field":        {field(nil, 2, bytes.Repeat([]byte("a"), 100<<10)), &blobpb.StoreRequest{}},
		"invalid UTF-8 in string field": {field(field(nil, 1, big1), 2, []byte{0xff, 0xfe}), &blobpb.StoreRequest{}},
		"truncated":                     {field(nil, 1, big1)[:70<<10], &blobpb.StoreRequest{}},
		"submessage not a message":      {field(nil, 2, big1), &registrypb.PullResponse{}},
		"unknown field":                 {field(field(nil, 1, big1), 99, big2), &blobpb.StoreRequest{}},
	}
	r := rand.New(rand.NewPCG(3, 4))
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			want := c.msg.ProtoReflect().Type().New().Interface()
			wantErr := proto.Unmarshal(c.wire, want)
			got := c.msg.ProtoReflect().Type().New().Interface()
			err := Codec{}.Unmarshal(split(c.wire, r, 16<<10), got)
			if (err != nil) != (wantErr != nil) {
				t.Fatalf("codec error %v, proto.Unmarshal error %v", err, wantErr)
			}
			if err == nil && !proto.Equal(got, want) {
				t.Fatal("codec and proto.Unmarshal decoded different messages")
			}
		})
	}
}

// FuzzCodec_Unmarshal: with the bulk threshold lowered to a few bytes, any input decodes through
// the codec exactly as proto.Unmarshal decodes it (same message, or an error for both).
func FuzzCodec_Unmarshal(f *testing.F) {
	defer func(v int) { aliasMin = v }(aliasMin)
	aliasMin = 4
	for _, msg := range codecCases() {
		if w, err := proto.Marshal(msg); err == nil && len(w) < 4096 {
			f.Add(w, false)
		}
	}
	f.Add([]byte{0x12, 0x08, 0x1a, 0x06, 'a', 'b', 'c', 'd', 'e', 'f'}, true)
	f.Fuzz(func(t *testing.T, wire []byte, pull bool) {
		var want, got proto.Message = &blobpb.StoreRequest{}, &blobpb.StoreRequest{}
		if pull {
			want, got = &registrypb.PullResponse{}, &registrypb.PullResponse{}
		}
		wantErr := proto.Unmarshal(wire, want)
		err := Codec{}.Unmarshal(split(wire, rand.New(rand.NewPCG(uint64(len(wire)), 0)), 7), got)
		if (err != nil) != (wantErr != nil) {
			t.Fatalf("codec error %v, proto.Unmarshal error %v", err, wantErr)
		}
		if err == nil && !proto.Equal(got, want) {
			t.Fatal("codec and proto.Unmarshal decoded different messages")
		}
	})
}

// A lent message is encoded by reference and its buffer released when the transport frees what
// Marshal returned; one too small to lend is copied and left to the sender.
func TestCodec_LentMessage(t *testing.T) {
	data := randBytes(9, 1<<20)
	released := 0
	lm := &lentMessage{Message: &registrypb.PullResponse{Msg: &registrypb.PullResponse_Data{Data: &registrypb.PullData{
		File: 2, Offset: 77, Data: data}}}, release: func() { released++ }}
	out, err := Codec{}.Marshal(lm)
	if err != nil || !lm.taken {
		t.Fatalf("marshal: taken %v, %v", lm.taken, err)
	}
	got := &registrypb.PullResponse{}
	if err := proto.Unmarshal(out.Materialize(), got); err != nil || !proto.Equal(got, lm.Message) {
		t.Fatalf("lent encoding decodes to a different message: %v", err)
	}
	shared := false
	for _, b := range out {
		shared = shared || unsafe.SliceData(b.ReadOnlyData()) == unsafe.SliceData(data)
	}
	if !shared || released != 0 {
		t.Fatalf("shared %v, released %d before the transport freed it", shared, released)
	}
	out.Free()
	if released != 1 {
		t.Fatalf("released %d times after Free", released)
	}

	small := &lentMessage{Message: &registrypb.PullResponse{Msg: &registrypb.PullResponse_Data{Data: &registrypb.PullData{
		Data: []byte("tail")}}}, release: func() { t.Fatal("the codec released a buffer it copied") }}
	out, err = Codec{}.Marshal(small)
	if err != nil || small.taken {
		t.Fatalf("small: taken %v, %v", small.taken, err)
	}
	out.Free()
}
