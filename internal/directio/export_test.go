package directio

// Staged is how many bytes w copied into its staging buffer.
func Staged(w *Writer) int64 { return w.staged }
