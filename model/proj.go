package model

import "fmt"

// Proj names one of the seven linear projections of a decoder layer that LoRA adapters (and
// router gates) can target. The order is the order the forward pass runs them in.
type Proj int

const (
	ProjQ Proj = iota
	ProjK
	ProjV
	ProjO
	ProjGate
	ProjUp
	ProjDown
	NumProj
)

var projNames = [NumProj]string{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

// String returns the Hugging Face module name ("q_proj", ...).
func (p Proj) String() string {
	if p < 0 || p >= NumProj {
		return fmt.Sprintf("Proj(%d)", int(p))
	}
	return projNames[p]
}

// Block is the HF sub-module that holds the projection: "self_attn" or "mlp".
func (p Proj) Block() string {
	if p <= ProjO {
		return "self_attn"
	}
	return "mlp"
}

// ParseProj maps "q_proj" (etc.) to its Proj.
func ParseProj(name string) (Proj, bool) {
	for i, n := range projNames {
		if n == name {
			return Proj(i), true
		}
	}
	return 0, false
}
