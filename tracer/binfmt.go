package tracer

import (
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"os"
)

// binprmBufSize is how much of a file the kernel reads to pick a binary
// format (BINPRM_BUF_SIZE); a "#!" line is only honoured within it.
const binprmBufSize = 256

// maxInterpDepth bounds interpreter chains (a script whose interpreter is
// a script ...); the kernel gives up after a handful of levels.
const maxInterpDepth = 5

// parseShebang returns the interpreter a "#!" header names, the way the
// kernel's binfmt_script reads it: blanks after "#!" skipped, the name
// ending at a blank or the end of the line. ok is false for anything the
// kernel would not run as a script.
func parseShebang(head []byte) (interp string, ok bool) {
	if !bytes.HasPrefix(head, []byte("#!")) {
		return "", false
	}
	line := head[2:]
	if nl := bytes.IndexByte(line, '\n'); nl >= 0 {
		line = line[:nl]
	} else if len(head) >= binprmBufSize {
		// No newline in the buffer: the kernel assumes the name is
		// truncated unless a blank or NUL follows it.
		if bytes.IndexAny(bytes.TrimLeft(line, " \t"), " \t\x00") < 0 {
			return "", false
		}
	}
	line = bytes.TrimLeft(line, " \t")
	if end := bytes.IndexAny(line, " \t\x00"); end >= 0 {
		line = line[:end]
	}
	if len(line) == 0 {
		return "", false
	}
	return string(line), true
}

// readShebang reads p's header and returns its interpreter, if it is a
// script.
func readShebang(p string) (string, bool) {
	f, err := os.Open(p)
	if err != nil {
		return "", false
	}
	defer f.Close()
	head := make([]byte, binprmBufSize)
	n, _ := io.ReadFull(f, head)
	return parseShebang(head[:n])
}

// elfInterp returns the PT_INTERP path of the ELF file r (the dynamic
// loader the kernel opens for it), "" for a static or non-ELF file.
func elfInterp(r io.ReaderAt) string {
	f, err := elf.NewFile(r)
	if err != nil {
		return ""
	}
	for _, p := range f.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		if p.Filesz == 0 || p.Filesz > 4096 {
			return ""
		}
		b := make([]byte, p.Filesz)
		if _, err := p.ReadAt(b, 0); err != nil {
			return ""
		}
		if i := bytes.IndexByte(b, 0); i >= 0 {
			b = b[:i]
		}
		return string(b)
	}
	return ""
}

// readELFInterp is elfInterp for the file at p.
func readELFInterp(p string) string {
	f, err := os.Open(p)
	if err != nil {
		return ""
	}
	defer f.Close()
	return elfInterp(f)
}

// IsStaticExecutable reports whether path is an ELF executable that needs
// no program interpreter, as anything mounted into arbitrary images to run
// there must be.
func IsStaticExecutable(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	if _, err := elf.NewFile(f); err != nil {
		return false, fmt.Errorf("%s is not an ELF executable: %w", path, err)
	}
	return elfInterp(f) == "", nil
}
