package serve

import (
	"testing"

	"google.golang.org/grpc/codes"
)

// Every kind has a full row in the one error table: an HTTP error status, an OpenAI type and a
// gRPC code that is not OK (a row left out in the middle of the table would be all zero).
func TestKindTableCoversEveryKind(t *testing.T) {
	if len(Kinds()) != int(numKinds) || len(kindTable) != int(numKinds) {
		t.Fatalf("%d kinds, %d rows, numKinds %d", len(Kinds()), len(kindTable), numKinds)
	}
	for _, k := range Kinds() {
		info := k.Info()
		if info.HTTPStatus < 400 || info.HTTPStatus > 599 || info.OpenAIType == "" || info.GRPCCode == codes.OK {
			t.Errorf("kind %d: row %+v", k, info)
		}
	}
	for _, k := range []Kind{-1, numKinds, 99} {
		if k.Info() != kindTable[KindInternal] {
			t.Errorf("kind %d outside the table answers %+v, want KindInternal's", k, k.Info())
		}
	}
}
