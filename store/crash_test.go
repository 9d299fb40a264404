package store_test

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/buffdb/buffdbd/store"
)

// crashChildEnv makes the test binary act as the crash test's child: a process that writes until it
// is killed, printing each acknowledged write.
const crashChildEnv = "BUFFDB_STORE_CRASH_CHILD"

func TestMain(m *testing.M) {
	if dir := os.Getenv(crashChildEnv); dir != "" {
		crashChild(dir, os.Getenv("BUFFDB_STORE_CRASH_ROUND"))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// crashOpts puts payload files at 4 KiB so the child writes many of them quickly.
var crashOpts = store.Options{InlineMax: 4096}

// crashBlob returns blob i's content: every third blob shares one of 4 contents (so dedupe and
// refcounts are exercised across deletes), the rest are unique.
func crashBlob(round string, i int) []byte {
	size := 6000 + i%5*3000
	if i%3 == 0 {
		size = 9000
	}
	b := make([]byte, size)
	seed := uint64(i)
	if i%3 == 0 {
		seed = uint64(i % 4)
	} else {
		seed += uint64(len(round)) << 40
		for _, c := range round {
			seed = seed*31 + uint64(c)
		}
	}
	r := rand.New(rand.NewPCG(seed, 7))
	for j := 0; j+8 <= len(b); j += 8 {
		binary.LittleEndian.PutUint64(b[j:], r.Uint64())
	}
	return b
}

func crashChild(dir, round string) {
	db, err := store.Open(ctx, dir, crashOpts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		os.Exit(2)
	}
	var out sync.Mutex
	say := func(format string, args ...any) {
		line := fmt.Sprintf(format+"\n", args...)
		out.Lock()
		os.Stdout.WriteString(line) // one write(2) per line: a kill never splits a line
		out.Unlock()
	}
	deadline := time.Now().Add(20 * time.Second) // never outlive a parent that died
	var wg sync.WaitGroup
	// Pipelined Sets, as a gRPC Set stream does.
	wg.Add(1)
	go func() {
		defer wg.Done()
		w := db.NewWriter()
		type pending struct {
			key string
			f   *store.Future
		}
		var q []pending
		for i := 0; time.Now().Before(deadline); i++ {
			k := fmt.Sprintf("r%s/k%d", round, i)
			q = append(q, pending{k, w.Set("", k, "v-"+k)})
			if len(q) == 64 {
				for _, p := range q {
					if _, err := p.f.Wait(ctx); err == nil {
						say("K %s", p.key)
					}
				}
				q = q[:0]
			}
		}
	}()
	// Payload-sized blob stores and some deletes.
	wg.Add(1)
	go func() {
		defer wg.Done()
		var ids []uint64
		for i := 0; time.Now().Before(deadline); i++ {
			data := crashBlob(round, i)
			id, err := db.StoreBlob(ctx, "", data, nil)
			if err != nil {
				continue
			}
			sum := sha256.Sum256(data)
			say("B %d %s", id, hex.EncodeToString(sum[:]))
			ids = append(ids, id)
			if i%4 == 3 {
				victim := ids[len(ids)/2]
				say("d %d", victim) // intent: after a kill, the blob may or may not be gone
				if err := db.DeleteBlob(ctx, "", victim); err == nil {
					say("D %d", victim)
				}
			}
		}
	}()
	// The registry's path: stream a payload durably, then reference it in an Update.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; time.Now().Before(deadline); i++ {
			data := crashBlob(round+"p", i)
			p, err := db.WritePayload(ctx, bytes.NewReader(data), nil)
			if err != nil {
				continue
			}
			id, err := payloadBlob(db, p, nil)
			if err == nil {
				sum := sha256.Sum256(data)
				say("B %d %s", id, hex.EncodeToString(sum[:]))
			}
		}
	}()
	// Indexed writes, in client transactions and autocommit, while another index is created
	// (backfilled) and dropped over and over: verifyAfterCrash checks every index's entries.
	db.CreateIndex(ctx, store.IndexDef{Name: "n", Unique: true, JSONPath: "$.n", KeyPrefix: "ix/", Kind: store.KindNumber})
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := 0; time.Now().Before(deadline); i++ {
			k := fmt.Sprintf("ix/%d", i%500)
			v := fmt.Sprintf(`{"n":%d,"s":"%s-%d"}`, rand.IntN(2000), round, i)
			switch i % 4 {
			case 0:
				db.Delete(ctx, "", k)
			case 1:
				tx, err := db.Begin(ctx, false, time.Second)
				if err != nil {
					continue
				}
				db.Set(ctx, tx, k, v)
				db.Set(ctx, tx, k+"b", v) // often violates the unique index: fails alone
				db.Delete(ctx, tx, fmt.Sprintf("ix/%d", rand.IntN(500)))
				if i%8 == 1 {
					db.Commit(ctx, tx)
				} else {
					db.Rollback(ctx, tx)
				}
			default:
				db.Set(ctx, "", k, v)
			}
		}
	}()
	go func() {
		defer wg.Done()
		for time.Now().Before(deadline) {
			db.CreateIndex(ctx, store.IndexDef{Name: "s", Type: store.IndexBTree, JSONPath: "$.s"})
			db.DropIndex(ctx, "s")
		}
	}()
	wg.Wait()
	db.Close()
}

// TestDB_CrashSafety SIGKILLs a writing child at random moments; after each restart every
// acknowledged write must be there, the database must pass integrity_check, and no blob row may
// point at a missing or wrong payload file.
func TestDB_CrashSafety(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns and kills child processes")
	}
	dir := t.TempDir()
	keys := map[string]bool{}
	blobs := map[uint64]string{} // id → sha256 hex
	deleted := map[uint64]bool{} // true: acknowledged; false: attempted (either outcome is fine)
	const rounds = 5
	for round := 0; round < rounds; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+dir, "BUFFDB_STORE_CRASH_ROUND="+strconv.Itoa(round))
		cmd.Stderr = os.Stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 1024)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		// Kill at a random moment after the child acknowledged both a Set and a blob (the timer starts
		// only then, so a slow, loaded machine cannot make a round kill before any write).
		var kill <-chan time.Time
		var acked int
		sawK, sawB := false, false
	read:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					break read
				}
				acked++
				f := strings.Fields(l)
				sawK, sawB = sawK || f[0] == "K", sawB || f[0] == "B"
				if sawK && sawB && kill == nil {
					kill = time.After(time.Duration(rand.IntN(400)) * time.Millisecond)
				}
				switch f[0] {
				case "K":
					keys[f[1]] = true
				case "B":
					id, _ := strconv.ParseUint(f[1], 10, 64)
					blobs[id] = f[2]
				case "D":
					id, _ := strconv.ParseUint(f[1], 10, 64)
					deleted[id] = true
				case "d":
					id, _ := strconv.ParseUint(f[1], 10, 64)
					deleted[id] = deleted[id] || false
				}
			case <-kill:
				cmd.Process.Signal(syscall.SIGKILL)
				kill = make(chan time.Time) // never fires again
			}
		}
		cmd.Wait()
		if acked == 0 {
			t.Fatalf("round %d: child acknowledged nothing", round)
		}
		verifyAfterCrash(t, dir, keys, blobs, deleted)
	}
	t.Logf("%d rounds: %d keys, %d blobs, %d deletes acknowledged and verified", rounds, len(keys), len(blobs), countTrue(deleted))
}

func verifyAfterCrash(t *testing.T, dir string, keys map[string]bool, blobs map[uint64]string, deleted map[uint64]bool) {
	t.Helper()
	db, err := store.Open(ctx, dir, crashOpts)
	if err != nil {
		t.Fatalf("reopen after kill: %v", err)
	}
	defer db.Close()
	if err := integrityCheck(db); err != nil {
		t.Fatal(err)
	}
	for k := range keys {
		if v, err := db.Get(ctx, "", k); err != nil || v != "v-"+k {
			t.Fatalf("acknowledged key %q lost: %q, %v", k, v, err)
		}
	}
	for id, sum := range blobs {
		info, err := db.StatBlob(ctx, "", id)
		if acked, attempted := deleted[id]; acked {
			if err == nil {
				t.Fatalf("acknowledged delete of blob %d lost", id)
			}
			continue
		} else if attempted && errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil || hex.EncodeToString(info.SHA256[:]) != sum {
			t.Fatalf("acknowledged blob %d lost: %+v, %v", id, info, err)
		}
	}
	// No row may reference a missing or corrupt payload, acknowledged or not.
	if err := db.VerifyPayloads(ctx, func(b store.BlobInfo, err error) {
		t.Errorf("blob %d: %v", b.ID, err)
	}); err != nil {
		t.Fatal(err)
	}
	verifyIndexes(t, db)
	// Every payload file on disk is referenced (orphans were collected at Open).
	var refs int64
	db.Query(ctx, "SELECT count(*) FROM payload", func(_ []string, r []any) error { refs = r[0].(int64); return nil })
	files, _ := filepath.Glob(filepath.Join(dir, "payloads", "*", "*"))
	if int64(len(files)) != refs {
		t.Fatalf("%d payload files on disk, %d referenced", len(files), refs)
	}
}

// verifyIndexes checks that every index's entries are exactly what indexing the kv table now
// gives: a copy of each index is created (backfilled from kv) and the two entry sets compared.
func verifyIndexes(t *testing.T, db *store.DB) {
	t.Helper()
	defs, err := db.ListIndexes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range defs {
		orig := d.Name
		d.Name = "verify-" + orig
		if _, err := db.CreateIndex(ctx, d); err != nil {
			t.Fatalf("rebuild index %q: %v", orig, err)
		}
		for _, pair := range [][2]string{{orig, d.Name}, {d.Name, orig}} {
			var diff []string
			err := db.Query(ctx, fmt.Sprintf(`SELECT e.key, e.value FROM kv_index_entry e JOIN kv_index i ON i.id = e.index_id WHERE i.name = '%s'
				EXCEPT SELECT e.key, e.value FROM kv_index_entry e JOIN kv_index i ON i.id = e.index_id WHERE i.name = '%s'`, pair[0], pair[1]),
				func(_ []string, r []any) error { diff = append(diff, fmt.Sprint(r)); return nil })
			if err != nil {
				t.Fatal(err)
			}
			if len(diff) > 0 {
				t.Fatalf("index %q: %d entries in %q but not in %q, e.g. %v", orig, len(diff), pair[0], pair[1], diff[0])
			}
		}
		if err := db.DropIndex(ctx, d.Name); err != nil {
			t.Fatal(err)
		}
	}
}

func countTrue(m map[uint64]bool) int {
	n := 0
	for _, v := range m {
		if v {
			n++
		}
	}
	return n
}
