// Command interop checks a cityid ledger with Go's reference transparency-log
// code (golang.org/x/mod/sumdb/note and sumdb/tlog), so that our formats are
// proven against an independent implementation rather than against themselves.
//
// It reads one JSON job on stdin (written by tests/test_ledger_interop.py),
// prints one "ok <check> ..." line per passing check, and exits non-zero with a
// "FAIL <check>: <reason>" line at the first failure.
//
// Build in GOPATH mode against Debian's golang-golang-x-mod-dev:
//
//	GO111MODULE=off GOPATH=$tmp:/usr/share/gocode go build -o interop main.go
package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// tileHeight is fixed by c2sp.org/tlog-tiles.
const tileHeight = 8

type inclusionJob struct {
	Index int64    `json:"index"`
	Leaf  string   `json:"leaf"` // base64 of the entry bytes
	Proof []string `json:"proof"`
}

type consistencyJob struct {
	OldSize int64    `json:"old_size"`
	OldRoot string   `json:"old_root"`
	Proof   []string `json:"proof"`
}

type job struct {
	Vkey          string           `json:"vkey"`
	CosignerVkeys []string         `json:"cosigner_vkeys"`
	Checkpoint    string           `json:"checkpoint"` // the whole signed note
	Dir           string           `json:"dir"`        // the tlog-tiles directory
	Inclusion     []inclusionJob   `json:"inclusion"`
	Consistency   []consistencyJob `json:"consistency"`
}

func fail(check string, err error) {
	fmt.Printf("FAIL %s: %v\n", check, err)
	os.Exit(1)
}

func decodeHash(s string) (tlog.Hash, error) {
	var h tlog.Hash
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return h, err
	}
	if len(b) != tlog.HashSize {
		return h, fmt.Errorf("hash is %d bytes, want %d", len(b), tlog.HashSize)
	}
	copy(h[:], b)
	return h, nil
}

func decodeHashes(list []string) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, 0, len(list))
	for _, s := range list {
		h, err := decodeHash(s)
		if err != nil {
			return nil, err
		}
		out = append(out, h)
	}
	return out, nil
}

// parseCheckpoint reads the c2sp.org/tlog-checkpoint body: origin, size, root.
func parseCheckpoint(text string) (string, tlog.Tree, error) {
	lines := strings.SplitN(text, "\n", 4)
	if len(lines) < 4 {
		return "", tlog.Tree{}, errors.New("checkpoint has fewer than three lines")
	}
	n, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || n < 0 {
		return "", tlog.Tree{}, fmt.Errorf("bad tree size %q", lines[1])
	}
	h, err := decodeHash(lines[2])
	if err != nil {
		return "", tlog.Tree{}, fmt.Errorf("bad root hash: %v", err)
	}
	return lines[0], tlog.Tree{N: n, Hash: h}, nil
}

// dirTiles serves tiles from a c2sp.org/tlog-tiles directory. The spec drops
// the height element that Go's sumdb paths carry (tile/8/L/N), so the path is
// rewritten; a partial tile that was replaced by its full tile is cut down.
type dirTiles struct{ dir string }

func (d dirTiles) Height() int { return tileHeight }

func (d dirTiles) path(t tlog.Tile) string {
	p := strings.TrimPrefix(t.Path(), fmt.Sprintf("tile/%d/", tileHeight))
	p = strings.Replace(p, "data/", "entries/", 1)
	return filepath.Join(d.dir, "tile", filepath.FromSlash(p))
}

func (d dirTiles) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		data, err := os.ReadFile(d.path(t))
		if errors.Is(err, os.ErrNotExist) && t.W < 1<<tileHeight {
			full := t
			full.W = 1 << tileHeight
			data, err = os.ReadFile(d.path(full))
			if err == nil && len(data) >= t.W*tlog.HashSize {
				data = data[:t.W*tlog.HashSize]
			}
		}
		if err != nil {
			return nil, err
		}
		out[i] = data
	}
	return out, nil
}

func (d dirTiles) SaveTiles([]tlog.Tile, [][]byte) {}

// readBundle reads the entry bundle holding entry index i of a tree of size n.
func readBundle(d dirTiles, n, i int64) ([][]byte, error) {
	t := tlog.Tile{H: tileHeight, L: -1, N: i >> tileHeight, W: 1 << tileHeight}
	if rest := n - t.N<<tileHeight; rest < 1<<tileHeight {
		t.W = int(rest)
	}
	data, err := os.ReadFile(d.path(t))
	if errors.Is(err, os.ErrNotExist) && t.W < 1<<tileHeight {
		full := t
		full.W = 1 << tileHeight
		data, err = os.ReadFile(d.path(full))
	}
	if err != nil {
		return nil, err
	}
	var entries [][]byte
	for len(data) > 0 {
		if len(data) < 2 {
			return nil, errors.New("truncated length prefix")
		}
		l := int(binary.BigEndian.Uint16(data))
		if len(data) < 2+l {
			return nil, errors.New("truncated entry")
		}
		entries = append(entries, data[2:2+l])
		data = data[2+l:]
	}
	if len(entries) < t.W {
		return nil, fmt.Errorf("bundle %d has %d entries, want %d", t.N, len(entries), t.W)
	}
	return entries[:t.W], nil
}

// checkCosignatures verifies c2sp.org/tlog-cosignature (cosignature/v1) lines
// by hand: this version of x/mod/sumdb/note predates the 0x04 key type.
func checkCosignatures(msg, text string, vkeys []string) (int, error) {
	sigs := msg[len(text)+1:]
	good := 0
	for _, vkey := range vkeys {
		parts := strings.SplitN(vkey, "+", 3)
		if len(parts) != 3 {
			return good, fmt.Errorf("bad cosigner vkey %q", vkey)
		}
		raw, err := base64.StdEncoding.DecodeString(parts[2])
		if err != nil || len(raw) != 33 || raw[0] != 0x04 {
			return good, fmt.Errorf("cosigner vkey %q is not an Ed25519 cosignature/v1 key", vkey)
		}
		id := sha256.Sum256(append([]byte(parts[0]+"\n\x04"), raw[1:]...))
		found := false
		for _, line := range strings.Split(strings.TrimSuffix(sigs, "\n"), "\n") {
			name, b64, ok := strings.Cut(strings.TrimPrefix(line, "— "), " ")
			if !ok || name != parts[0] {
				continue
			}
			sig, err := base64.StdEncoding.DecodeString(b64)
			if err != nil || len(sig) != 4+8+ed25519.SignatureSize || !bytes.Equal(sig[:4], id[:4]) {
				continue
			}
			ts := binary.BigEndian.Uint64(sig[4:12])
			signed := fmt.Sprintf("cosignature/v1\ntime %d\n%s", ts, text)
			if !ed25519.Verify(raw[1:], []byte(signed), sig[12:]) {
				return good, fmt.Errorf("cosignature by %s does not verify", name)
			}
			found = true
		}
		if !found {
			return good, fmt.Errorf("no cosignature by %s", parts[0])
		}
		good++
	}
	return good, nil
}

func main() {
	in, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("input", err)
	}
	var j job
	if err := json.Unmarshal(in, &j); err != nil {
		fail("input", err)
	}

	// 1. The checkpoint is a signed note under the log's Ed25519 key.
	v, err := note.NewVerifier(j.Vkey)
	if err != nil {
		fail("vkey", err)
	}
	n, err := note.Open([]byte(j.Checkpoint), note.VerifierList(v))
	if err != nil {
		fail("checkpoint-signature", err)
	}
	origin, tree, err := parseCheckpoint(n.Text)
	if err != nil {
		fail("checkpoint-format", err)
	}
	if origin != v.Name() {
		fail("checkpoint-origin", fmt.Errorf("origin %q is not the key name %q", origin, v.Name()))
	}
	fmt.Printf("ok checkpoint-signature origin=%s size=%d unverified=%d\n", origin, tree.N, len(n.UnverifiedSigs))

	if len(j.CosignerVkeys) > 0 {
		count, err := checkCosignatures(j.Checkpoint, n.Text, j.CosignerVkeys)
		if err != nil {
			fail("cosignature", err)
		}
		fmt.Printf("ok cosignature count=%d\n", count)
	}

	// 2. Inclusion proofs, as RFC 6962 audit paths.
	for _, inc := range j.Inclusion {
		leaf, err := base64.StdEncoding.DecodeString(inc.Leaf)
		if err != nil {
			fail("inclusion", err)
		}
		proof, err := decodeHashes(inc.Proof)
		if err != nil {
			fail("inclusion", err)
		}
		if err := tlog.CheckRecord(proof, tree.N, tree.Hash, inc.Index, tlog.RecordHash(leaf)); err != nil {
			fail("inclusion", fmt.Errorf("index %d: %v", inc.Index, err))
		}
		fmt.Printf("ok inclusion index=%d\n", inc.Index)
	}

	// 3. Consistency proofs from older checkpoints.
	for _, c := range j.Consistency {
		old, err := decodeHash(c.OldRoot)
		if err != nil {
			fail("consistency", err)
		}
		proof, err := decodeHashes(c.Proof)
		if err != nil {
			fail("consistency", err)
		}
		if err := tlog.CheckTree(proof, tree.N, tree.Hash, c.OldSize, old); err != nil {
			fail("consistency", fmt.Errorf("from %d: %v", c.OldSize, err))
		}
		fmt.Printf("ok consistency old=%d\n", c.OldSize)
	}

	// 4. The tiles on disk: Go's TileHashReader authenticates every tile it
	// reads against the checkpoint root, and TreeHash recomputes the root.
	if j.Dir != "" && tree.N > 0 {
		tiles := dirTiles{j.Dir}
		reader := tlog.TileHashReader(tree, tiles)
		root, err := tlog.TreeHash(tree.N, reader)
		if err != nil {
			fail("tiles-root", err)
		}
		if root != tree.Hash {
			fail("tiles-root", fmt.Errorf("tiles give root %v, checkpoint says %v", root, tree.Hash))
		}
		fmt.Printf("ok tiles-root size=%d\n", tree.N)

		// Every entry in the bundles hashes to its leaf hash in the tiles.
		var indexes []int64
		for i := int64(0); i < tree.N; i++ {
			indexes = append(indexes, tlog.StoredHashIndex(0, i))
		}
		leafHashes, err := reader.ReadHashes(indexes)
		if err != nil {
			fail("entry-bundles", err)
		}
		var bundle [][]byte
		for i := int64(0); i < tree.N; i++ {
			if i%(1<<tileHeight) == 0 {
				if bundle, err = readBundle(tiles, tree.N, i); err != nil {
					fail("entry-bundles", fmt.Errorf("bundle for index %d: %v", i, err))
				}
			}
			if tlog.RecordHash(bundle[i%(1<<tileHeight)]) != leafHashes[i] {
				fail("entry-bundles", fmt.Errorf("entry %d does not hash to its leaf hash", i))
			}
		}
		fmt.Printf("ok entry-bundles entries=%d\n", tree.N)

		// And Go derives the same proofs from our tiles as we served.
		for _, inc := range j.Inclusion {
			p, err := tlog.ProveRecord(tree.N, inc.Index, reader)
			if err != nil {
				fail("prove-record", err)
			}
			want, _ := decodeHashes(inc.Proof)
			if len(p) != len(want) {
				fail("prove-record", fmt.Errorf("index %d: %d hashes, want %d", inc.Index, len(p), len(want)))
			}
			for k := range p {
				if p[k] != want[k] {
					fail("prove-record", fmt.Errorf("index %d: hash %d differs", inc.Index, k))
				}
			}
			fmt.Printf("ok prove-record index=%d\n", inc.Index)
		}
	}
	fmt.Println("ok all")
}
