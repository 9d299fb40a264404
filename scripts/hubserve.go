//go:build ignore

// hubserve runs the Hugging Face Hub emulator (huggingface/hubtest) on loopback for shell tests:
// it serves one repository, org/model at main (an LFS weights file and a config.json), writes the
// Hub URL to the file named by its argument and serves until killed.
//
//	go build -o hubserve scripts/hubserve.go && ./hubserve endpoint.txt &
package main

import (
	"os"
	"os/signal"
	"syscall"

	"github.com/buffdb/buffdbd/huggingface/hubtest"
)

func main() {
	if len(os.Args) != 2 {
		os.Stderr.WriteString("usage: hubserve ENDPOINT_FILE\n")
		os.Exit(2)
	}
	hub := hubtest.New()
	defer hub.Close()
	hub.AddRepo("org/model", hubtest.RepoOptions{LibraryName: "transformers"})
	hub.Commit("org/model", "main", []hubtest.FileSpec{
		{Path: "model.safetensors", Content: hubtest.Random(1, 3<<20), LFS: true},
		{Path: "config.json", Content: hubtest.Bytes([]byte(`{"model_type":"test"}`))},
	})
	if err := os.WriteFile(os.Args[1], []byte(hub.Endpoint()+"\n"), 0o644); err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		os.Exit(1)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	<-sig
}
