// gogzip writes stdin to stdout as Go's compress/gzip does at a level: what
// docker, buildkit and containerd write for image layers. The codec's test
// fixtures (make-fixtures) and the end-to-end tests' Go-built layers use it.
//
// usage: go run gogzip.go LEVEL < in > out.gz
package main

import (
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"strconv"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: gogzip LEVEL < in > out.gz")
		os.Exit(2)
	}
	level, err := strconv.Atoi(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "gogzip: bad level:", err)
		os.Exit(2)
	}
	w, err := gzip.NewWriterLevel(os.Stdout, level)
	if err == nil {
		_, err = io.Copy(w, os.Stdin)
	}
	if err == nil {
		err = w.Close()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gogzip:", err)
		os.Exit(1)
	}
}
