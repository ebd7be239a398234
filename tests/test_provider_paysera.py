"""routes/paysera-wallet.yaml walked through Paysera's scope page (named atop the table) sentence by
sentence, each quoted beside its cases, through the real ASGI app and a real grant store: offline
scopes count through the user's offline grants, optional scopes wait for their condition, the
extended scope for a fresh SMS confirmation, and GET /rest/v1/user/me shows only granted members."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.loading import load_config
from gateway.validation import validate_scopes
from tests.scenarios import Ago, Case, Fulfil, GivenGrant, Provider, Revoke, Says, Upstream, fresh, play, store_url

pytestmark = pytest.mark.anyio
P = "/paysera/rest/v1"
ME = f"{P}/user/me"
WALLET = f"{P}/wallet/w1"
CC = {"sub": "client-1"}  # Paysera's "default credentials": a client-credentials token (sub == client_id)
USER2 = {"sub": "user-2"}

# GET /rest/v1/user/me as Paysera answers it: every member its response table lists, plus members
# no scope guards (id, display_name, type).
USER = {
    "id": 42, "display_name": "Jonas", "type": "natural",
    "email": "jonas@example.com", "phone": "37060000000", "address": {"country_code": "LT"},
    "dob": "1990-01-01", "gender": "male", "identity": {"name": "Jonas", "surname": "Jonaitis"},
    "identification_level": "fully_identified", "calculated_level": "fully_identified",
    "wallets": [14], "locale": "lt", "options": {"default_currency": "EUR"}, "pep": [],
}
UNGUARDED = frozenset({"id", "display_name", "type"})


def members(*names: str) -> frozenset[str]:
    return UNGUARDED | frozenset(names)


@dataclass
class Validates:
    """`gateway scopes validate`'s function, for what Paysera's authorization server decides."""

    scopes: str
    stage: str
    valid: bool

    async def __call__(self, provider: Provider) -> None:
        check = validate_scopes(load_config(provider.config), "paysera-wallet", self.scopes, stage=self.stage)
        assert check.valid is self.valid, (self, check.problems)


SEED: list[tuple[str, list[Any]]] = [
    # --- Understanding Scopes ------------------------------------------------------------------------
    ("Scopes define what information your application can access and what actions it can perform on behalf of the user.", [
        Case(f"GET {WALLET}/balance", "balance", "forward", forwarded_scopes="balance"),
        Case(f"GET {WALLET}/balance", "statements", "403 forbidden"),
        Case(f"GET {WALLET}/balance", None, "401 unauthorized"),
    ]),

    # --- Offline Scopes (*_offline) ------------------------------------------------------------------
    ("Add _offline suffix to any scope (e.g., balance_offline) / User confirms scope during OAuth authorization", [
        # not confirmed by anyone yet
        Says(Case(f"GET {WALLET}/balance", "balance_offline", "403 forbidden"),
             description=("the offline grant balance_offline by user-1 to client client-1 does not exist",)),
        # confirmed by another user, or by this user to another client: not this token's
        GivenGrant("balance_offline", subject="user-2"),
        GivenGrant("balance_offline", subject="user-1", client="client-2"),
        Case(f"GET {WALLET}/balance", "balance_offline", "403 forbidden"),
        Case(f"GET {WALLET}/balance", "balance_offline", "forward", claims=USER2, forwarded_scopes="balance"),
        # confirmed by this user to this client
        GivenGrant("balance_offline", subject="user-1"),
        Case(f"GET {WALLET}/balance", "balance_offline", "forward", forwarded_scopes="balance"),
        # the offline form is balance, nothing more
        Case(f"GET {WALLET}/statements", "balance_offline", "403 forbidden"),
    ]),
    ("After confirmation, you can access information using default credentials / No need to use access token for subsequent requests", [
        # default credentials on a path naming the user act through that user's offline grants
        Case(f"GET {P}/user/user-1/wallets", "", "403 forbidden", claims=CC),
        GivenGrant("wallet_list_offline", subject="user-1"),
        Case(f"GET {P}/user/user-1/wallets", "", "forward", claims=CC, forwarded_scopes="wallet_list"),
        # ... only the scopes that user confirmed, for that user
        Case(f"GET {P}/user/user-1/email", "", "403 forbidden", claims=CC),
        Case(f"GET {P}/user/user-2/wallets", "", "403 forbidden", claims=CC),
        # the client token's own scopes do not stand in for the user's confirmation
        Case(f"GET {P}/user/user-1/email", "email", "403 forbidden", claims=CC),
        # a user's own token names only its own user; another user's path does not exist for it
        Case(f"GET {P}/user/user-1/wallets", "wallet_list", "forward", forwarded_scopes="wallet_list"),
        Case(f"GET {P}/user/user-2/wallets", "wallet_list", "404 not_found"),
    ]),
    ("Get user ID with access token", [
        Upstream(USER),
        # any valid token reads the user resource; a scope not yet confirmed adds no member
        Says(Case(f"GET {ME}", "balance_offline", "forward", forwarded_scopes=""), members=members()),
        Case(f"GET {ME}", None, "401 unauthorized"),
    ]),
    ("Access information anytime with default credentials / No token expiration concerns", [
        # an offline grant without an expiry keeps counting, for the user and for the client
        GivenGrant("email_offline", subject="user-1"),
        Case(f"GET {ME}/email", "email_offline", "forward", forwarded_scopes="email"),
        Case(f"GET {P}/user/user-1/email", "", "forward", claims=CC, forwarded_scopes="email"),
    ]),
    ("Users can revoke offline scopes in their Paysera account. Always handle forbidden errors.", [
        GivenGrant("balance_offline", subject="user-1"),
        GivenGrant("wallet_list_offline", subject="user-1"),
        Case(f"GET {WALLET}/balance", "balance_offline", "forward"),
        Case(f"GET {P}/user/user-1/wallets", "", "forward", claims=CC),
        Revoke("balance_offline", subject="user-1"),
        Says(Case(f"GET {WALLET}/balance", "balance_offline", "403 forbidden"),
             description=("the offline grant balance_offline by user-1 to client client-1 was revoked at",),
             challenge=('error="insufficient_scope"', 'scope="balance"')),
        Revoke("wallet_list_offline", subject="user-1"),
        Says(Case(f"GET {P}/user/user-1/wallets", "", "403 forbidden", claims=CC),
             description=("only through that user's active offline grants",)),
        # confirmed again: counts again
        GivenGrant("balance_offline", subject="user-1"),
        Case(f"GET {WALLET}/balance", "balance_offline", "forward"),
    ]),
    ("Offline scopes only available with authorization code grant.", [
        # Issuing is the authorization server's (a catalog's grant_types cannot single out a suffix form).
        # At the gateway an _offline scope in a default-credentials token (sub == client_id) is read
        # against its own subject, the client, to whom no user confirms: it never counts, even when
        # the user did confirm. Default credentials reach a user's data only on paths naming the user.
        GivenGrant("balance_offline", subject="user-1"),
        Case(f"GET {WALLET}/balance", "balance_offline", "forward"),
        Case(f"GET {WALLET}/balance", "balance_offline", "403 forbidden", claims=CC),
        Case(f"GET {WALLET}/balance", "balance_offline", "403 forbidden", claims={"drop": ("sub",)}),
    ]),

    # --- Optional Scopes (*_optional) ----------------------------------------------------------------
    ("Add _optional suffix (e.g., phone_optional) / Information accessible only after user meets scope conditions / Returns not_found error until conditions met", [
        Says(Case(f"GET {ME}/phone", "phone_optional", "404 not_found"),
             description=("phone: the user has not met the scope's condition yet",)),
        Fulfil("user-1", "phone"),
        Case(f"GET {ME}/phone", "phone_optional", "forward", forwarded_scopes="phone"),
        Case(f"GET {ME}/confirmed-phones", "phone_optional", "forward", forwarded_scopes="phone"),
        # met by user-1, not by user-2
        Case(f"GET {ME}/phone", "phone_optional", "404 not_found", claims=USER2),
        # no longer met (the user removed the phone): not_found again
        Fulfil("user-1", "phone", met=False),
        Case(f"GET {ME}/phone", "phone_optional", "404 not_found"),
        # an optional scope that would not meet the route anyway is plainly forbidden
        Case(f"GET {ME}/email", "phone_optional", "403 forbidden"),
    ]),
    ("Can be combined with offline: phone_offline_optional", [
        Case(f"GET {ME}/phone", "phone_offline_optional", "403 forbidden"),   # not confirmed offline
        GivenGrant("phone_offline", subject="user-1"),
        Case(f"GET {ME}/phone", "phone_offline_optional", "404 not_found"),   # confirmed, condition not met
        Fulfil("user-1", "phone"),
        Case(f"GET {ME}/phone", "phone_offline_optional", "forward", forwarded_scopes="phone"),
        Revoke("phone_offline", subject="user-1"),
        Case(f"GET {ME}/phone", "phone_offline_optional", "403 forbidden"),   # revoked beats a met condition
    ]),
    ("Example: email_optional, phone_offline_optional / Request email but don't require immediate confirmation: scope=email_optional", [
        # email has no condition in the scope page's "Scope Behavior" table: its optional form counts at once
        Case(f"GET {ME}/email", "email_optional", "forward", forwarded_scopes="email"),
        Case(f"GET {ME}/phone", "email_optional", "403 forbidden"),
    ]),
    ("When combining offline and optional: scope_offline_optional (offline first, then optional)", [
        GivenGrant("phone_offline", subject="user-1"),
        Fulfil("user-1", "phone"),
        Case(f"GET {ME}/phone", "phone_offline_optional", "forward", forwarded_scopes="phone"),
        Says(Case(f"GET {ME}/phone", "phone_optional_offline", "403 invalid_scope"),
             description=("suffixes in the wrong order",), challenge=('error="invalid_scope"',)),
        Case(f"GET {ME}/email", "email_optional_offline", "403 invalid_scope"),
        # a wrong-order scope spoils the whole token, whatever else it holds
        Case(f"GET {ME}/email", "email phone_optional_offline", "403 invalid_scope"),
    ]),

    # --- Extended Scopes -----------------------------------------------------------------------------
    ("Extended Scopes: Cannot be requested during token request / Must be attached during token refresh", [
        Validates("convert_currency", stage="authorize", valid=False),
        Validates("convert_currency", stage="token", valid=False),
        Validates("convert_currency", stage="refresh", valid=True),
        Validates("balance", stage="token", valid=True),
    ]),
    ("Requires code parameter (SMS confirmation code) / User receives SMS for verification (Example: convert_currency)", [
        # carried without a fresh SMS confirmation: authenticate again (RFC 9470)
        Says(Case(f"POST {P}/currency-conversion", "convert_currency", "401 insufficient_user_authentication"),
             challenge=('error="insufficient_user_authentication"', 'acr_values="sms"', 'max_age="300"')),
        Case(f"GET {P}/currency-conversion", "convert_currency", "401 insufficient_user_authentication"),
        Case(f"POST {P}/currency-conversion", "convert_currency", "401 insufficient_user_authentication", claims=fresh("password")),
        Case(f"POST {P}/currency-conversion", "convert_currency", "401 insufficient_user_authentication", claims=fresh("sms", age=320)),
        # confirmed by SMS just now: counts
        Case(f"POST {P}/currency-conversion", "convert_currency", "forward", claims=fresh("sms"), forwarded_scopes="convert_currency"),
        Case(f"GET {P}/currency-conversion", "convert_currency", "forward", claims=fresh("sms", age=280)),
        Case(f"POST {P}/currency-conversion", "convert_currency", "forward", claims={"amr": ["pwd", "sms"], "auth_time": Ago(10)}),
    ]),
    ("Process: 1. Request token without extended scope ... 3. Refresh token with code parameter 4. Extended scope added to token", [
        Case(f"POST {P}/currency-conversion", "balance", "403 forbidden"),
        Case(f"POST {P}/currency-conversion", "balance", "403 forbidden", claims=fresh("sms")),
        Case(f"POST {P}/currency-conversion", "balance convert_currency", "forward", claims=fresh("sms"), forwarded_scopes="balance convert_currency"),
        # the extended scope opens only currency conversion
        Case(f"GET {WALLET}/balance", "convert_currency", "403 forbidden", claims=fresh("sms")),
    ]),

    # --- Complete Scope List: User Information Scopes (no mark: offline and optional; one '-': offline only)
    ("email | Get user's confirmed email address", [
        Case(f"GET {ME}/email", "email", "forward", forwarded_scopes="email"),
        Case(f"GET {P}/user/user-1/email", "email", "forward"),
        Case(f"GET {ME}/email", "phone", "403 forbidden"),
        Case(f"GET {ME}/email", "email_offline_optional", "403 forbidden"),   # offered; not confirmed offline
    ]),
    ("phone | Get user's confirmed phone number", [
        Case(f"GET {ME}/phone", "phone", "forward", forwarded_scopes="phone"),
        Case(f"GET {ME}/confirmed-phones", "phone", "forward"),
        Case(f"GET {ME}/phone", "email", "403 forbidden"),
    ]),
    ("address | Get user's address", [
        Case(f"GET {ME}/address", "address", "forward", forwarded_scopes="address"),
        Case(f"GET {P}/user/user-1/address", "address", "forward"),
        Case(f"GET {ME}/address", "email", "403 forbidden"),
    ]),
    ("dob | Get user's date of birth / gender | Get user's gender", [
        Upstream(USER),
        Says(Case(f"GET {ME}", "dob gender", "forward"), members=members("dob", "gender")),
        Says(Case(f"GET {ME}", "dob_optional gender_optional", "forward"), members=members("dob", "gender")),   # no condition
    ]),
    ("full_name | Get confirmed name and surname (requires identification)", [
        Case(f"GET {ME}/identity", "full_name", "forward", forwarded_scopes="full_name"),
        Case(f"GET {ME}/identity", "full_name_optional", "404 not_found"),
    ]),
    ("identification_level | Get user's identification level | -", [
        Upstream(USER),
        Says(Case(f"GET {ME}", "identification_level", "forward"), members=members("identification_level", "calculated_level")),
        Case(f"GET {ME}", "identification_level_optional", "403 invalid_scope"),
        Case(f"GET {ME}", "identification_level_offline", "forward", forwarded_scopes=""),
    ]),
    ("identity | Get confirmed name, surname, nationality, and ID code (requires identification)", [
        Case(f"GET {ME}/identity", "identity", "forward", forwarded_scopes="identity"),
        Case(f"GET {P}/user/user-1/identity", "identity", "forward"),
        Case(f"GET {ME}/identity", "email", "403 forbidden"),
    ]),
    ("identification_data | Get identification information (personal code, documents) | -", [
        Case(f"GET {ME}/identification-requests", "identification_data", "forward", forwarded_scopes="identification_data"),
        Case(f"GET {ME}/identification-requests", "identity", "403 forbidden"),
        Case(f"GET {ME}/identification-requests", "identification_data_optional", "403 invalid_scope"),
    ]),
    ("user_info | Get basic user information (locale, preferences) | -", [
        Upstream(USER),
        Says(Case(f"GET {ME}", "user_info", "forward"), members=members("locale", "options")),
        Case(f"GET {ME}", "user_info_optional", "403 invalid_scope"),
    ]),

    # --- Wallet & Transaction Scopes ------------------------------------------------------------------
    ("balance | Get balance of user's wallet | -", [
        Case(f"GET {WALLET}/balance", "balance", "forward", forwarded_scopes="balance"),
        Case(f"GET {WALLET}/balance", "balance_optional", "403 invalid_scope"),
        Case(f"GET {WALLET}/balance", "balance_offline_optional", "403 invalid_scope"),
    ]),
    ("check_has_sufficient_balance | Check if user has sufficient funds | - -", [
        Case(f"GET {WALLET}/sufficient-amount", "check_has_sufficient_balance", "forward", forwarded_scopes="check_has_sufficient_balance"),
        Case(f"GET {WALLET}/sufficient-amount", "balance", "403 forbidden"),
        Says(Case(f"GET {WALLET}/sufficient-amount", "check_has_sufficient_balance_offline", "403 invalid_scope"),
             description=("check_has_sufficient_balance does not offer the offline suffix",)),
        Case(f"GET {WALLET}/sufficient-amount", "check_has_sufficient_balance_optional", "403 invalid_scope"),
    ]),
    ("statements | Get account statements and transaction history | -", [
        Case(f"GET {WALLET}/statements", "statements", "forward", forwarded_scopes="statements"),
        Case(f"GET {WALLET}/reservation-statements", "statements", "forward"),
        Case(f"GET {WALLET}/statements", "balance", "403 forbidden"),
        Case(f"GET {WALLET}/statements", "statements_optional", "403 invalid_scope"),
    ]),
    ("wallet_list | Get list of all available wallets for user | -", [
        Case(f"GET {ME}/wallets", "wallet_list", "forward", forwarded_scopes="wallet_list"),
        Case(f"GET {ME}/wallets", "balance", "403 forbidden"),
        Case(f"GET {ME}/wallets", "wallet_list_optional", "403 invalid_scope"),
    ]),
    ("favourites | Get most common payment beneficiaries | -", [
        Case(f"GET {WALLET}/favourites", "favourites", "forward", forwarded_scopes="favourites"),
        Case(f"GET {WALLET}/favourites", "statements", "403 forbidden"),
    ]),

    # --- Payment & Transfer Scopes --------------------------------------------------------------------
    ("incoming_payments | Access incoming pending payments and provide passwords | -", [
        Case(f"GET {WALLET}/pending-payments", "incoming_payments", "forward"),
        Case(f"PUT {WALLET}/pending-payment/p1", "incoming_payments", "forward", forwarded_scopes="incoming_payments"),
        Case(f"PUT {WALLET}/pending-payment/p1", "outgoing_payments", "403 forbidden"),
    ]),
    ("outgoing_payments | Access outgoing pending payments with passwords | -", [
        Case(f"GET {WALLET}/pending-payments", "outgoing_payments", "forward"),
        Case(f"DELETE {WALLET}/pending-payment/p1", "outgoing_payments", "forward", forwarded_scopes="outgoing_payments"),
        Case(f"DELETE {WALLET}/pending-payment/p1", "incoming_payments", "403 forbidden"),
    ]),
    ("initiate_transfers | Initiate transfers on user's behalf | - -", [
        Case(f"POST {P}/payment-initiation/transfers", "initiate_transfers", "forward", forwarded_scopes="initiate_transfers"),
        Case(f"GET {P}/payment-initiation/transfers/t1", "initiate_transfers", "forward"),
        Case(f"POST {P}/payment-initiation/transfers", "balance", "403 forbidden"),
        Case(f"POST {P}/payment-initiation/transfers", "initiate_transfers_offline", "403 invalid_scope"),
    ]),
    ("convert_currency | Make currency conversions (Extended scope) | - -", [
        Case(f"POST {P}/currency-conversion", "convert_currency", "forward", claims=fresh("sms")),
        Case(f"POST {P}/currency-conversion", "convert_currency_offline", "403 invalid_scope", claims=fresh("sms")),
    ]),

    # --- Project & Service Scopes ---------------------------------------------------------------------
    ("projects | Access and manage user's administered projects | -", [
        Case(f"GET {ME}/projects", "projects", "forward", forwarded_scopes="projects"),
        Case(f"PUT {P}/project/p1", "projects", "forward"),
        Case(f"PUT {P}/project/p1", "services", "403 forbidden"),
        Case(f"GET {P}/project/p1", "", "forward"),   # reading a project the client reaches needs no user scope
    ]),
    ("services | Get list of enabled services or enable service for user | -", [
        Case(f"GET {ME}/services", "services", "forward", forwarded_scopes="services"),
        Case(f"PUT {ME}/service/transfers", "services", "forward"),
        Case(f"PUT {ME}/service/transfers", "projects", "403 forbidden"),
    ]),
    ("cards | Manage user's cards (create, edit, delete, link with accounts) | -", [
        Case(f"POST {P}/card", "cards", "forward", forwarded_scopes="cards"),
        Case(f"GET {P}/cards", "cards", "forward"),
        Case(f"DELETE {P}/card/c1", "cards", "forward"),
        Case(f"DELETE {P}/card/c1", "balance", "403 forbidden"),
    ]),

    # --- Additional Scopes ----------------------------------------------------------------------------
    ("sent_transaction_requests | Access initiated transaction requests | -", [
        Case(f"POST {P}/transaction/t1/request", "sent_transaction_requests", "forward", forwarded_scopes="sent_transaction_requests"),
        Case(f"POST {P}/transaction/t1/request", "received_transaction_requests", "403 forbidden"),
        Case(f"GET {P}/transaction-requests", "sent_transaction_requests", "forward"),
    ]),
    ("received_transaction_requests | Access received transaction requests | -", [
        Case(f"GET {P}/transaction-requests", "received_transaction_requests", "forward", forwarded_scopes="received_transaction_requests"),
        Case(f"GET {P}/transaction-requests", "balance", "403 forbidden"),
    ]),
    ("user_position | Provide user's current position | -", [
        Case(f"PUT {ME}/position", "user_position", "forward", forwarded_scopes="user_position"),
        Case(f"GET {ME}/position", "user_position", "forward"),
        Case(f"PUT {ME}/position", "user_info", "403 forbidden"),
    ]),
    ("avatar | Provide, change, and delete user's avatar | -", [
        Case(f"PUT {ME}/avatar", "avatar", "forward", forwarded_scopes="avatar"),
        Case(f"DELETE {ME}/avatar", "avatar", "forward"),
        Case(f"DELETE {ME}/avatar", "user_info", "403 forbidden"),
    ]),
    ("manage_account | Change and delete account descriptions | -", [
        Case(f"PUT {WALLET}", "manage_account", "forward", forwarded_scopes="manage_account"),
        Case(f"DELETE {WALLET}/description", "manage_account", "forward"),
        Case(f"PUT {WALLET}", "wallet_list", "403 forbidden"),
        Case(f"GET {WALLET}", "", "forward"),   # reading a wallet needs no scope (quick reference)
    ]),
    ("phone_confirmation | Send transaction confirmation FLASH SMS | -", [
        Case(f"POST {P}/transaction/t1/flash", "phone_confirmation", "forward", forwarded_scopes="phone_confirmation"),
        Case(f"PUT {P}/transaction/t1/flash/w1", "phone_confirmation", "forward"),
        Case(f"POST {P}/transaction/t1/flash", "phone", "403 forbidden"),
    ]),
    ("pep | Get user's list of politically exposed persons | -", [
        Case(f"GET {ME}/pes", "pep", "forward", forwarded_scopes="pep"),
        Case(f"GET {ME}/pes", "identity", "403 forbidden"),
    ]),

    # --- Scope Examples and Common Scope Combinations -------------------------------------------------
    ("Basic User Information: Request email and phone: scope=email phone", [
        Case(f"GET {ME}/email", "email phone", "forward", forwarded_scopes="email phone"),
        Case(f"GET {ME}/phone", "email phone", "forward"),
        Case(f"GET {ME}/address", "email phone", "403 forbidden"),
    ]),
    ("Offline Access: Request permanent access to balance: scope=balance_offline", [
        GivenGrant("balance_offline", subject="user-1"),
        Case(f"GET {WALLET}/balance", "balance_offline", "forward", forwarded_scopes="balance"),
    ]),
    ("Combined: Request offline optional phone: scope=phone_offline_optional", [
        GivenGrant("phone_offline", subject="user-1"),
        Fulfil("user-1", "phone"),
        Case(f"GET {ME}/phone", "phone_offline_optional", "forward", forwarded_scopes="phone"),
    ]),
    ("Multiple Scopes: Request several permissions: scope=email balance statements wallet_list", [
        Case(f"GET {ME}/email", "email balance statements wallet_list", "forward", forwarded_scopes="balance email statements wallet_list"),
        Case(f"GET {WALLET}/balance", "email balance statements wallet_list", "forward"),
        Case(f"GET {WALLET}/statements", "email balance statements wallet_list", "forward"),
        Case(f"GET {ME}/wallets", "email balance statements wallet_list", "forward"),
        Case(f"GET {WALLET}/favourites", "email balance statements wallet_list", "403 forbidden"),
    ]),
    ("Basic Profile Access: email phone user_info / Full User Profile: email phone address identity identification_level", [
        Upstream(USER),
        Says(Case(f"GET {ME}", "email phone user_info", "forward"), members=members("email", "phone", "locale", "options")),
        Says(Case(f"GET {ME}", "email phone address identity identification_level", "forward"),
             members=members("email", "phone", "address", "identity", "identification_level", "calculated_level")),
    ]),
    ("Payment Application: balance statements incoming_payments outgoing_payments", [
        Case(f"GET {WALLET}/balance", "balance statements incoming_payments outgoing_payments", "forward"),
        Case(f"GET {WALLET}/pending-payments", "balance statements incoming_payments outgoing_payments", "forward"),
        Case(f"PUT {WALLET}/pending-payment/p1", "balance statements incoming_payments outgoing_payments", "forward"),
        Case(f"POST {P}/payment-initiation/transfers", "balance statements incoming_payments outgoing_payments", "403 forbidden"),
    ]),
    ("Financial Dashboard: balance_offline statements_offline wallet_list_offline", [
        GivenGrant("balance_offline", subject="user-1"),
        GivenGrant("statements_offline", subject="user-1"),
        Case(f"GET {WALLET}/balance", "balance_offline statements_offline wallet_list_offline", "forward", forwarded_scopes="balance statements"),
        Case(f"GET {ME}/wallets", "balance_offline statements_offline wallet_list_offline", "403 forbidden"),   # wallet_list not confirmed yet
        GivenGrant("wallet_list_offline", subject="user-1"),
        Case(f"GET {ME}/wallets", "balance_offline statements_offline wallet_list_offline", "forward", forwarded_scopes="balance statements wallet_list"),
        # and with default credentials, on the path naming the user
        Case(f"GET {P}/user/user-1/wallets", "", "forward", claims=CC, forwarded_scopes="balance statements wallet_list"),
    ]),

    # --- Scope Behavior: User Must Meet Requirements --------------------------------------------------
    ("Some scopes require user action before granting: phone (add and validate phone number), address (input address), full_name / identity (perform identification), phone_confirmation", [
        Case(f"GET {ME}/address", "address_optional", "404 not_found"),
        Case(f"GET {ME}/identity", "identity_optional", "404 not_found"),
        Case(f"GET {ME}/identity", "full_name_optional", "404 not_found"),
        Fulfil("user-1", "address"),
        Fulfil("user-1", "full_name"),
        Case(f"GET {ME}/address", "address_optional", "forward", forwarded_scopes="address"),
        Case(f"GET {ME}/identity", "full_name_optional", "forward", forwarded_scopes="full_name"),
        Case(f"GET {ME}/identity", "identity_optional", "404 not_found"),   # each scope's own condition
        # phone_confirmation offers no optional form (one '-'): its condition is the OAuth flow's
        Case(f"POST {P}/transaction/t1/flash", "phone_confirmation_optional", "403 invalid_scope"),
        # scopes without a requirement: their optional forms count at once
        Case(f"GET {ME}/email", "email_optional", "forward"),
    ]),
    ("If requirements not met: Regular scope: User asked to complete during OAuth flow / Optional scope: Returns not_found until completed", [
        # the plain form is never held back: the user met the requirement before the token was issued
        Case(f"GET {ME}/phone", "phone", "forward"),
        Case(f"GET {ME}/address", "address", "forward"),
        Case(f"GET {ME}/phone", "phone_optional", "404 not_found"),
        Fulfil("user-1", "phone"),
        Case(f"GET {ME}/phone", "phone_optional", "forward"),
    ]),

    # --- Testing Scopes: Verification -----------------------------------------------------------------
    ("Check scope access: GET /rest/v1/user/me ... Response will only include fields for granted scopes.", [
        Upstream(USER),
        Says(Case(f"GET {ME}", "", "forward"), members=members()),
        Says(Case(f"GET {ME}", "email", "forward"), members=members("email")),
        Says(Case(f"GET {ME}", "full_name", "forward"), members=members("identity")),
        Says(Case(f"GET {ME}", "wallet_list pep", "forward"), members=members("wallets", "pep")),
        # an optional form shows its member once it counts
        Says(Case(f"GET {ME}", "phone_optional email_optional", "forward"), members=members("email")),
        Fulfil("user-1", "phone"),
        Says(Case(f"GET {ME}", "phone_optional email_optional", "forward"), members=members("email", "phone")),
        # an offline form, once confirmed; and default credentials see what the user confirmed
        Says(Case(f"GET {ME}", "dob_offline", "forward"), members=members()),
        GivenGrant("dob_offline", subject="user-1"),
        Says(Case(f"GET {ME}", "dob_offline", "forward"), members=members("dob")),
        Says(Case(f"GET {P}/user/user-1", "", "forward", claims=CC), members=members("dob")),
        Says(Case(f"GET {P}/user/user-2", "", "forward", claims=CC), members=members()),
        # a user token on another user's resource: not found
        Case(f"GET {P}/user/user-2", "email", "404 not_found"),
    ]),

    # --- Scope Errors ---------------------------------------------------------------------------------
    ("invalid_scope: Requested scope doesn't exist or not available for your client. Solution: Check scope spelling and availability", [
        Says(Case(f"GET {WALLET}/balance", "balance emial", "403 invalid_scope"),
             description=("unknown scopes are refused by this API: emial",), challenge=('error="invalid_scope"',)),
        Case(f"GET {WALLET}/balance", "balanse", "403 invalid_scope"),
        Case(f"GET {WALLET}/balance", "balance_offline_offline", "403 invalid_scope"),
        Case(f"GET {WALLET}/balance", "balance_optional", "403 invalid_scope"),   # not available as optional
    ]),
    ("forbidden: Offline scope was revoked by user / Client doesn't have permission for scope", [
        GivenGrant("statements_offline", subject="user-1"),
        Revoke("statements_offline", subject="user-1"),
        Says(Case(f"GET {WALLET}/statements", "statements_offline", "403 forbidden"), description=("was revoked at",)),
        Says(Case(f"GET {WALLET}/statements", "balance", "403 forbidden"),
             description=("requires statements",), challenge=('error="insufficient_scope"', 'scope="statements"')),
    ]),
    ("not_found: Optional scope not yet fulfilled by user. Solution: Wait for user to complete requirements", [
        Case(f"GET {ME}/address", "address_optional", "404 not_found"),
        Fulfil("user-1", "address"),
        Case(f"GET {ME}/address", "address_optional", "forward"),
    ]),
    ("(deny by default) Every request not listed in the table", [
        Case(f"GET {P}/user/me/secrets", "email", "404 not_found"),
        Case(f"POST {WALLET}/balance", "balance", "404 not_found"),
    ]),
]


@pytest.fixture(params=["sqlite", "redis"])
async def paysera(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Provider]:
    provider = Provider("paysera-wallet.yaml", tmp_path, store_url(request))
    await provider.start()
    yield provider
    await provider.aclose()


@pytest.mark.parametrize(("sentence", "steps"), SEED, ids=[sentence[:60] for sentence, _ in SEED])
async def test_the_seed_sentence_by_sentence(paysera: Provider, sentence: str, steps: list[Any]) -> None:
    await play(paysera, steps)
