// verify_pass checks an admission pass the way a Go backend would: with only the waiting
// room's JWKS URL, github.com/golang-jwt/jwt/v5 and github.com/MicahParks/keyfunc/v3.
//
//	go run . -jwks http://127.0.0.1:9101/.well-known/jwks.json -pass <JWS> -schedule 42
//
// It prints the verified claims as JSON and exits 0, or prints why not and exits 1.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
)

// PassClaims are the claims of an admission pass.
type PassClaims struct {
	Schedule int64 `json:"sch"`
	jwt.RegisteredClaims
}

func main() {
	jwksURL := flag.String("jwks", "", "URL of the JWK Set")
	pass := flag.String("pass", "", "the admission pass (compact JWS)")
	schedule := flag.Int64("schedule", 0, "the schedule the pass must be for")
	issuer := flag.String("iss", "waiting-room", "expected issuer")
	audience := flag.String("aud", "seat-service", "expected audience")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	keys, err := keyfunc.NewDefaultCtx(ctx, []string{*jwksURL})
	if err != nil {
		fail("cannot load the JWK Set: %v", err)
	}
	claims := &PassClaims{}
	_, err = jwt.ParseWithClaims(*pass, claims, keys.Keyfunc,
		jwt.WithValidMethods([]string{"ES256", "EdDSA", "RS256"}),
		jwt.WithIssuer(*issuer),
		jwt.WithAudience(*audience),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(5*time.Second),
	)
	if err != nil {
		fail("pass refused: %v", err)
	}
	if claims.Schedule != *schedule {
		fail("pass is for schedule %d, not %d", claims.Schedule, *schedule)
	}
	out, _ := json.Marshal(claims)
	fmt.Println(string(out))
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}
