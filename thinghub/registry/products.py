"""Products (reference §2.2): CreateProduct, QueryProduct, QueryProductList, UpdateProduct,
DeleteProduct."""

from __future__ import annotations

from typing import Any

from . import errors as e
from ._base import (
    _ALNUM,
    _AUTH_TYPES,
    _COMMODITY_CODES,
    _PRODUCT_SELECT,
    DEFAULT_TOPIC_CATEGORIES,
    RegistryBase,
    _check_data_format,
    _exists,
    _exists_name,
    _product,
    _product_key,
    _random,
)
from .errors import (
    ConflictError,
    InvalidParameterError,
    QuotaExceededError,
)
from .models import (
    NodeType,
    Page,
    Product,
)
from .validation import (
    check_description,
    check_node_type,
    check_page,
    check_product_name,
)


class ProductsMixin(RegistryBase):
    """Product operations."""

    def create_product(
        self,
        account_id: str,
        name: str | None,
        node_type: NodeType | int | str | None,
        *,
        instance_id: str | None = None,
        data_format: int | str | None = None,
        auth_type: str | None = None,
        description: str | None = None,
        aliyun_commodity_code: str | None = None,
        net_type: str | None = None,
        category_key: str | None = None,
    ) -> Product:
        """CreateProduct (reference §2.2). Generates the ProductKey (``a1`` + 9 alphanumerics)
        and a 16-character ProductSecret, and adds the three default topic categories.

        Defaults where the reference is silent, as the cloud documents them: DataFormat 1
        (Alink JSON), AuthType ``secret``, AliyunCommodityCode ``iothub`` (basic edition).
        """
        name = check_product_name(name)
        kind = check_node_type(node_type)
        fmt = _check_data_format(data_format)
        auth = auth_type or "secret"
        if auth not in _AUTH_TYPES:
            raise InvalidParameterError(
                e.INVALID_PARAMETER, "AuthType must be secret, id2 or x509."
            )
        commodity = aliyun_commodity_code or "iothub"
        if commodity not in _COMMODITY_CODES:
            raise InvalidParameterError(
                e.INVALID_COMMODITY_CODE, "AliyunCommodityCode must be iothub or iothub_senior."
            )
        desc = check_description(description, code=e.LONG_PRODUCT_DESC)
        now = self._clock()
        product_secret = _random(_ALNUM, 16)
        with self.store.write() as conn:
            self._require_account(conn, account_id)
            self._check_instance(conn, account_id, instance_id)
            if _exists_name(conn, account_id, name, None):
                raise ConflictError(
                    e.ALREADY_EXISTED_PRODUCT_NAME, "The same product name already exists."
                )
            count = conn.execute(
                "SELECT COUNT(*) FROM products WHERE account_id = ?", (account_id,)
            ).fetchone()[0]
            if count >= self.max_products_per_account:
                raise QuotaExceededError(
                    e.PRODUCT_COUNT_EXCEED_MAX,
                    f"The account already has {count} products, the maximum.",
                )
            product_key = _product_key()
            while _exists(conn, "products", "product_key", product_key):
                product_key = _product_key()
            conn.execute(
                "INSERT INTO products (product_key, account_id, instance_id, name, node_type, "
                "data_format, auth_type, description, product_secret, commodity_code, "
                "net_type, category_key, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    product_key,
                    account_id,
                    instance_id,
                    name,
                    int(kind),
                    fmt,
                    auth,
                    desc,
                    product_secret,
                    commodity,
                    net_type,
                    category_key,
                    now,
                ),
            )
            conn.executemany(
                "INSERT INTO topic_categories (product_key, short_name, operation, "
                "description, created_at) VALUES (?, ?, ?, ?, ?)",
                [(product_key, s, op.value, d, now) for s, op, d in DEFAULT_TOPIC_CATEGORIES],
            )
            return self._product(conn, account_id, instance_id, product_key)

    def query_product(
        self, account_id: str, product_key: str | None, *, instance_id: str | None = None
    ) -> Product:
        """QueryProduct: the product with its DeviceCount."""
        with self.store.read() as conn:
            return self._product(conn, account_id, instance_id, product_key)

    def list_products(
        self,
        account_id: str,
        *,
        page: int | str | None = 1,
        page_size: int | str | None = 10,
        instance_id: str | None = None,
        aliyun_commodity_code: str | None = None,
    ) -> Page[Product]:
        """QueryProductList (reference §2.2): newest first, PageSize at most 200."""
        current, size = check_page(page, page_size, default_size=10, max_size=200)
        if aliyun_commodity_code and aliyun_commodity_code not in _COMMODITY_CODES:
            raise InvalidParameterError(
                e.INVALID_COMMODITY_CODE, "AliyunCommodityCode must be iothub or iothub_senior."
            )
        where = "p.account_id = ? AND p.instance_id IS ?"
        args: list[Any] = [account_id, instance_id]
        if aliyun_commodity_code:
            where += " AND p.commodity_code = ?"
            args.append(aliyun_commodity_code)
        with self.store.read() as conn:
            self._check_instance(conn, account_id, instance_id)
            total = conn.execute(f"SELECT COUNT(*) FROM products p WHERE {where}", args)
            total_count = int(total.fetchone()[0])
            rows = conn.execute(
                f"{_PRODUCT_SELECT} WHERE {where} ORDER BY p.seq DESC LIMIT ? OFFSET ?",
                [*args, size, (current - 1) * size],
            ).fetchall()
        return Page(tuple(_product(r) for r in rows), total_count, current, size)

    def update_product(
        self,
        account_id: str,
        product_key: str | None,
        *,
        name: str | None,
        description: str | None = None,
        instance_id: str | None = None,
    ) -> Product:
        """UpdateProduct: ProductName (required) and Description (kept when None)."""
        name = check_product_name(name)
        desc = (
            None
            if description is None
            else check_description(description, code=e.LONG_PRODUCT_DESC)
        )
        with self.store.write() as conn:
            product = self._product(conn, account_id, instance_id, product_key)
            if _exists_name(conn, account_id, name, product.product_key):
                raise ConflictError(
                    e.ALREADY_EXISTED_PRODUCT_NAME, "The same product name already exists."
                )
            conn.execute(
                "UPDATE products SET name = ?, description = COALESCE(?, description) "
                "WHERE product_key = ?",
                (name, desc, product.product_key),
            )
            return self._product(conn, account_id, instance_id, product.product_key)

    def delete_product(
        self, account_id: str, product_key: str | None, *, instance_id: str | None = None
    ) -> None:
        """DeleteProduct. Refused while the product has devices (``iot.prod.ProductHasDevices``,
        ThingHub's choice: the reference lists no code for it), so that deleting a product can
        never strand signed-in devices or their queued messages."""
        with self.store.write() as conn:
            product = self._product(conn, account_id, instance_id, product_key)
            if product.device_count:
                raise ConflictError(
                    e.PRODUCT_HAS_DEVICES,
                    f"The product still has {product.device_count} devices; delete them first.",
                )
            conn.execute("DELETE FROM device_applies WHERE product_key = ?", (product.product_key,))
            conn.execute("DELETE FROM products WHERE product_key = ?", (product.product_key,))
            self._category_cache.pop(product.product_key, None)
