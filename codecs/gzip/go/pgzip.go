// pgzip writes stdin to stdout as klauspost/pgzip does with a block size:
// what umoci and skopeo write for image layers. The codec's test fixtures
// (make-fixtures) use it; build it against Debian's packaged sources
// (golang-github-klauspost-pgzip-dev, GOPATH=/usr/share/gocode).
//
// usage: go run pgzip.go BLOCKSIZE < in > out.gz
package main

import (
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/klauspost/pgzip"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: pgzip BLOCKSIZE < in > out.gz")
		os.Exit(2)
	}
	size, err := strconv.Atoi(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgzip: bad block size:", err)
		os.Exit(2)
	}
	w := pgzip.NewWriter(os.Stdout)
	err = w.SetConcurrency(size, 4)
	if err == nil {
		_, err = io.Copy(w, os.Stdin)
	}
	if err == nil {
		err = w.Close()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgzip:", err)
		os.Exit(1)
	}
}
