package testutil

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// DirLayer is a layer holding the tree under dir (a root filesystem made
// by debootstrap, say): regular files, directories, symlinks and hard
// links; device nodes, sockets and fifos are left out. Entries keep their
// modes, owners and modification times (whole seconds), as an image built
// from the tree would: a Python tree's .pyc files name the times of their
// sources, and one time stamped on every entry would make each of them
// stale, so that every start compiled its modules again. Access and
// change times are left out, so the same tree gives the same layer.
func DirLayer(dir string) Layer {
	return Layer{&layerSource{
		desc: "dir " + dir,
		tar: sync.OnceValues(func() (*tarBlob, error) {
			data, err := dirTar(dir)
			if err != nil {
				return nil, err
			}
			return newTarBlob(data), nil
		}),
	}}
}

func dirTar(dir string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	links := map[[2]uint64]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		mode := info.Mode()
		if !mode.IsRegular() && !mode.IsDir() && mode&fs.ModeSymlink == 0 {
			return nil
		}
		var target string
		if mode&fs.ModeSymlink != 0 {
			if target, err = os.Readlink(p); err != nil {
				return err
			}
		}
		h, err := tar.FileInfoHeader(info, target)
		if err != nil {
			return err
		}
		h.Name = filepath.ToSlash(rel)
		if mode.IsDir() {
			h.Name += "/"
		}
		h.ModTime = info.ModTime().Truncate(time.Second)
		h.AccessTime, h.ChangeTime = time.Time{}, time.Time{}
		h.Uname, h.Gname = "", ""
		h.Format = tar.FormatPAX
		if st, ok := statIDs(info); ok && mode.IsRegular() {
			if first, seen := links[st]; seen {
				h.Typeflag, h.Linkname, h.Size = tar.TypeLink, first, 0
			} else {
				links[st] = h.Name
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if h.Typeflag == tar.TypeReg {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
